# shellcheck shell=sh
# `dp logs` on a host (see admin.rs): the last lines of the app log, and with follow
# what is appended to it (tail -F: across rotation) until dp goes away. Set before this
# file: log (its path), lines (how many) and follow (non-empty: keep following).
# shellcheck disable=SC2154 # log, lines and follow come before.

[ -e "$log" ] || { echo "no app log at $log" >&2; exit 1; }
if [ -z "$follow" ]; then
  # Bounded, as every command dp runs on a host (a log on a hung mount, say).
  exec timeout -k 2 30 tail -n "$lines" -- "$log"
fi
# Ends when dp's side of stdin closes (dp was interrupted or gave up on the host).
tail -n "$lines" -F -- "$log" </dev/null &
dp_tail=$!
while IFS= read -r _; do :; done
kill "$dp_tail" 2>/dev/null || true
