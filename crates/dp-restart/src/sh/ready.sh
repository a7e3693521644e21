# shellcheck shell=sh
# dp-restart's check before any host switches (see script.rs, ready), after the lock.
# Set before this file: rel (the release to go live).
# shellcheck disable=SC2154 # releases and rel come before.

[ -f "$releases/$rel/.dp/complete" ] || { echo "release $rel is not complete on this host; it cannot go live" >&2; exit 3; }
