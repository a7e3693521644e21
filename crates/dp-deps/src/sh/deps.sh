# shellcheck shell=sh
# dp-deps on a host (see script.rs), after the lock and the kinds: compute the
# environment's key on the host, reuse or build the environment, link it into the
# release; then the [build] command. Prints `kind`, `key`, `cache` and `waited`, then
# `build ok`. Set before this file:
# - rel: the release; kind: auto, pip, npm or command; python; cmd (a command kind's
#   command); link (a command kind's link); pip_args and lockfiles (shell words, quoted:
#   evaluated); keep_env (names of PIP_* / npm_config_* variables kept);
# - wait_secs (how long to wait for another deploy building the same environment),
#   build_secs (the environment build's deadline), renew (non-empty: renew the lease
#   before the build), dp_kinds and build_text (kinds.sh, evaluated already, and
#   build.sh: together the build's own shell);
# - step (the [build] command; empty for none), step_secs (its deadline) and
#   step_failed (its exit status when it fails).
# shellcheck disable=SC2154 # root, releases and the values above come before.

# The environment of kind $kind for the lockfiles "$@": found by its key, or built.
dp_deps() {
  "dp_kind_$kind"
  # shellcheck disable=SC2086 # the default lock files are plain words.
  [ $# -gt 0 ] || set -- $lockfiles
  deps="$root/.dp/deps"
  dp_mkdir "$deps"
  for f; do
    [ -f "$f" ] || { echo "lockfile $f is missing from release $rel" >&2; exit 4; }
  done
  key=$({ printf '%s\n' dp-deps-1 "$kind" "$ver" "$pip_args" "$cmd"; for f; do printf '%s\n' "$f"; cat -- "$f"; done
    for dp_v in $keep_env; do eval "printf 'env %s=%s\\n' \"\$dp_v\" \"\${$dp_v-}\""; done; } | sha256sum)
  key=${key%"${key#????????????????}"}
  env="$deps/$key"
  cache=hit
  waited=0
  if [ ! -f "$env/.dp-complete" ]; then
    # One builder per key: mkdir is atomic. A lock older than an hour is a crashed build.
    own=
    while :; do
      if mkdir -- "$env.lock" 2>/dev/null; then own=1; break; fi
      [ -f "$env/.dp-complete" ] && break
      if [ -n "$(find "$env.lock" -maxdepth 0 -mmin +60 2>/dev/null)" ]; then rm -rf -- "$env.lock"; continue; fi
      if [ "$waited" -ge "$wait_secs" ]; then
        echo "gave up after ${wait_secs}s waiting for another deploy building dependencies $key" >&2; exit 1
      fi
      sleep 1; waited=$((waited + 1))
    done
    if [ -n "$own" ]; then
      trap 'rm -rf -- "$env.lock"' EXIT
      # (Not after || or &&: the build's own lines must run under set -e.)
      if [ ! -f "$env/.dp-complete" ]; then dp_deps_build "$@"; fi
    fi
  fi
  up=
  case $link in */*)
    up=$(printf '%s' "$link" | sed 's|[^/]*/|../|g; s|[^/]*$||')
    dp_mkdir "$rd/${link%/*}"
    ;;
  esac
  # A link carried over from the base release that already leads to this environment
  # stays (same relative target); anything else there is replaced.
  # -ef: as -nt (see helpers.sh).
  # shellcheck disable=SC3013
  if ! { [ -L "$rd/$link" ] && [ "$rd/$link" -ef "$env$sub" ]; }; then
    dp_rm "$rd/$link"
    ln -s -- "$up../../.dp/deps/$key$sub" "$rd/$link"
  fi
  dp_write_file "$rd/.dp/deps-key" '%s\n' "$key"
  dp_write_file "$rd/.dp/deps-bin" '%s\n' "$bin"
  echo "kind $kind"
  echo "key $key"
  echo "cache $cache"
  echo "waited $waited"
}

# The build: a shell of its own (so `set -e` holds: it does not inside an `if`), under
# a deadline that stops it with everything the installer started.
dp_deps_build() {
  cache=built
  # A build may take long: the lease is renewed before it.
  if [ -n "$renew" ]; then dp_lock renew; fi
  rm -rf -- "$env"
  log="$env.log"
  export env kind python pip_args cmd
  # What the host's environment would change in the install goes, but for keep_env
  # (only here, where a build happens: a hit starts no process for it).
  for dp_v in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p; s/^\([Nn][Pp][Mm]_[Cc][Oo][Nn][Ff][Ii][Gg]_[A-Za-z0-9_]*\)=.*/\1/p'); do
    case " $keep_env " in *" $dp_v "*) ;; *) unset "$dp_v" ;; esac
  done
  dp_release_env "$rel"
  if ! dp_locked dp_deadline "$build_secs" "the dependency build" "$log" sh -c "$dp_kinds$build_text" dp-deps-build "$@" 2>/dev/null; then
    tail -n 25 -- "$log" >&2
    rm -rf -- "$env"
    exit 1
  fi
  : > "$env/.dp-complete"
}

rd="$releases/$rel"
[ -f "$rd/.dp/complete" ] || { echo "release $rel is not complete on this host (run dp-sync first)" >&2; exit 3; }
cd "$rd" || exit 1
eval "set -- $lockfiles"
[ "$kind" != auto ] || dp_kind_auto
if [ "$kind" = none ]; then
  echo "kind none"; echo "key "; echo "cache none"
else
  dp_deps "$@"
fi
# The [build] command runs in the release with its environment's programs first on
# PATH, under `sh -e`: its first failing line fails it.
if [ -n "$step" ]; then
  cd "$rd" || exit 1
  dp_deps_path "$rd"
  dp_release_env "$rel"
  dp_rc=0
  dp_locked dp_deadline "$step_secs" 'the build command' "$root/.dp/build.log" sh -e -c "$step" || dp_rc=$?
  if [ "$dp_rc" -ne 0 ]; then echo "the build command failed (exit status $dp_rc); its output is in $root/.dp/build.log" >&2; exit "$step_failed"; fi
  echo "build ok"
fi
