# shellcheck shell=sh
# `dp status` on a host (see admin.rs): prints `current R`, `since T` (when `current` was
# switched, in seconds since the epoch), `previous R` (where a rollback would go),
# `lock LINE` when a deploy holds the lock, and `release R` for each complete release,
# newest first.
# shellcheck disable=SC2154 # root comes before.

dp_current
echo "current $dp_cur_rel"
# The link's own time: it is renamed into place at each switch.
[ -z "$dp_cur_rel" ] || echo "since $(stat -c %Y -- "$root/current" 2>/dev/null)"
echo "previous $(dp_prev_live "$dp_cur_rel")"
dp_lock_read
[ -z "$dp_cur" ] || printf 'lock %s\n' "$dp_cur"
dp_by_age
for r in $dp_list; do echo "release $r"; done
