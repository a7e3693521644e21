# shellcheck shell=sh
# The kinds of dependency environment (Kind in lib.rs), each declared once, here:
# - `dp_kind_auto`: sets kind to the kind the release's files call for (none if none).
# - `dp_kind_K`, run in the release: sets `lockfiles` (the default list, when the config
#   names none), `link` (where the environment is linked in the release), `sub` (what of
#   the environment directory is linked: empty for all of it), `bin` (where its programs
#   are, relative to the release: .dp/deps-bin) and `ver` (the tool's version, part of
#   the environment's key); exits 12 when the tool is missing.
# - `dp_build_K LOCKFILE...`: builds the environment in $env, in the release, under
#   `sh -e` (build.sh).
# Adding a kind: its two functions here, a line in dp_kind_auto if it is detected, and
# its name in Kind.
# shellcheck disable=SC2034 # the values are the caller's.
# shellcheck disable=SC2154 # python, pip_args, cmd and env come from the caller.

dp_kind_auto() {
  if [ -f requirements.txt ]; then kind=pip
  elif [ -f package-lock.json ]; then kind=npm
  else kind=none
  fi
}

dp_kind_pip() {
  lockfiles=requirements.txt link=.venv sub='' bin=.venv/bin
  ver=$("$python" --version 2>&1) || { echo "$python is not installed on this host (needed for pip dependencies): $ver" >&2; exit 12; }
}
dp_build_pip() {
  "$python" -m venv -- "$env"
  for f; do set -- "$@" -r "$f"; shift; done
  eval "set -- \"\$@\" $pip_args"
  "$env/bin/python" -m pip install --disable-pip-version-check --no-input "$@"
}

dp_kind_npm() {
  lockfiles='package.json package-lock.json' link=node_modules sub=/node_modules bin=node_modules/.bin
  ver=$(node --version 2>&1) || { echo "node is not installed on this host (needed for npm dependencies): $ver" >&2; exit 12; }
  command -v npm >/dev/null 2>&1 || { echo "npm is not installed on this host" >&2; exit 12; }
}
dp_build_npm() {
  # Installed in the release (so file: dependencies resolve), then moved into the
  # environment; node_modules keeps working there (its links are relative).
  rm -rf node_modules
  npm ci --no-audit --no-fund
  mkdir -p -- "$env"
  if [ -d node_modules ]; then mv node_modules "$env/node_modules"; else mkdir -- "$env/node_modules"; fi
}

# The link is the configured one (already in $link); the command names its lockfiles.
dp_kind_command() {
  lockfiles='' sub='' bin=$link/bin ver=''
}
dp_build_command() {
  mkdir -p -- "$env"
  # Its first failing line fails it, as in every build step.
  DP_DEPS_DIR="$env" sh -e -c "$cmd"
}
