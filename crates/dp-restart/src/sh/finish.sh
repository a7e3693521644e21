# shellcheck shell=sh
# dp-restart's finish on a host (see script.rs, finish and switch): dp_finish appends a
# history line and, while this deploy holds the lock, cleans up. Set before it runs:
# keep, prev (the release current was switched from), rel (the lock id), history (one
# JSON line) and rollback (non-empty for a rollback); dp_cleanup comes with it
# (layout::cleanup_sh).
# shellcheck disable=SC2154 # root and the values above come before.

dp_finish() {
  dp_mkdir "$root/.dp"
  printf '%s\n' "$history" >> "$root/.dp/history.jsonl"
  # Clean up only while this release holds the lock: another deploy may be mid-sync.
  if dp_lock_is "$rel"; then
    dp_cleanup "$keep" "$prev" "$rollback"
  fi
}
