# shellcheck shell=sh
# dp-restart's check before any host switches (see script.rs, ready), after the lock.
# Set before this file: rel (the release to go live; empty: the one current points to).
# shellcheck disable=SC2154 # releases and rel come before.

if [ -z "$rel" ]; then
  dp_current
  rel=$dp_cur_rel
  [ -n "$rel" ] || { echo "no live release on this host (no current): nothing to restart" >&2; exit 3; }
fi

[ -f "$releases/$rel/.dp/complete" ] || { echo "release $rel is not complete on this host; it cannot go live" >&2; exit 3; }
