# shellcheck shell=sh
# One try of a health command (see health.rs), in the release current points to. Set
# before this file: release and previous (for DP_RELEASE and DP_PREVIOUS_RELEASE), cmd
# (the command) and secs (how long it may take: what is left of the health timeout).
# shellcheck disable=SC2154 # root and the values above come before.

cd -P "$root/current" || exit 1
dp_release_env "$release" "$previous"
dp_deadline "$secs" 'the health check' "$root/.dp/health.log" sh -c "$cmd"
