# shellcheck shell=sh
# A migration command on the chosen host (see exec.rs), after the passed variables
# (read from stdin) and the lock. Set before this file: rel (the release), what (the
# command's name in messages), log (its log file under .dp), cmd (the command) and secs
# (its deadline). Its status is the command's; with give_back non-empty the lock is
# given back after it (the post-switch command, which took it for its run).
# shellcheck disable=SC2154 # root, releases and the values above come before.

dp_release_env "$rel"
cd "$releases/$rel" || exit 1
dp_deps_path "$PWD"
dp_rc=0
dp_locked dp_deadline "$secs" "$what" "$root/.dp/$log" sh -c "$cmd" || dp_rc=$?
if [ -n "$give_back" ]; then dp_unlock "$rel"; fi
exit "$dp_rc"
