# shellcheck shell=sh
# `dp exec CMD` on a host (see admin.rs): runs CMD with /bin/sh in the release `current`
# points to, with DP_RELEASE, DP_PREVIOUS_RELEASE (empty) and DP_ROOT set, stdin from
# /dev/null, stopped past its deadline; its output comes back as this script's stdout.
# Set before this file: cmd and secs.
# shellcheck disable=SC2154 # root, cmd and secs come before.

dp_current
[ -n "$dp_cur_rel" ] || { echo "no release is live on this host (no current)" >&2; exit 3; }
cd -P "$root/current" || exit 1
dp_release_env "$dp_cur_rel" ""
dp_deps_path "$PWD"
dp_mkdir "$root/.dp"
dp_deadline "$secs" "the command" "$root/.dp/exec.log" sh -c "$cmd" 2>&1
