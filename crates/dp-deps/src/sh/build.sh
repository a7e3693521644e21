# shellcheck shell=sh
# The build of a dependency environment, run as `sh -c BUILD dp-deps-build LOCKFILE...`
# in the release directory, with env, kind, python, pip_args and cmd in its environment
# (see script.rs).
# shellcheck disable=SC2154 # env, kind, python, pip_args and cmd come from the caller.

set -e
case $kind in
pip)
  "$python" -m venv "$env"
  for f; do set -- "$@" -r "$f"; shift; done
  eval "set -- \"\$@\" $pip_args"
  "$env/bin/python" -m pip install --disable-pip-version-check --no-input "$@"
  ;;
npm)
  # Installed in the release (so file: dependencies resolve), then moved into the
  # environment; node_modules keeps working there (its links are relative).
  rm -rf node_modules
  npm ci --no-audit --no-fund
  mkdir -p "$env"
  if [ -d node_modules ]; then mv node_modules "$env/node_modules"; else mkdir "$env/node_modules"; fi
  ;;
command)
  mkdir -p "$env"
  # Its first failing line fails it, as in every build step.
  DP_DEPS_DIR="$env" sh -e -c "$cmd"
  ;;
esac
