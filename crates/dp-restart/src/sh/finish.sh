# shellcheck shell=sh
# dp-restart's finish on a host (see script.rs, finish): the cleanup, while this deploy
# holds the lock; a history line. Set before this file: keep, prev (the release current
# was switched from), rel (the lock id) and history (one JSON line); dp_cleanup comes
# with it (layout::CLEANUP_SH).
# shellcheck disable=SC2154 # root and the values above come before.

dp_mkdir "$root/.dp"
# Clean up only while this release holds the lock: another deploy may be mid-sync.
if dp_lock_is "$rel"; then
  dp_cleanup "$keep" "$prev"
fi
printf '%s\n' "$history" >> "$root/.dp/history.jsonl"
