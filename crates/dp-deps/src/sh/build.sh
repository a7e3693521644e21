# shellcheck shell=sh
# The build of a dependency environment, run as `sh -c BUILD dp-deps-build LOCKFILE...`
# in the release directory (BUILD: kinds.sh, then this file: dp_kinds and build_text),
# with env, kind, python, pip_args and cmd in its environment (see deps.sh).
# shellcheck disable=SC2154 # kind comes from the caller.

set -e
"dp_build_$kind" "$@"
