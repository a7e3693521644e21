# shellcheck shell=sh
# dp-restart's switch on a host (see script.rs), after the lock. Set before this file:
# target (the release to switch to; empty: the one a rollback returns to, dp_prev_live),
# mode (deploy; rollback: a host already on the target is left as it is; current: no
# switch, the restart in the release current points to),
# restart (the restart command; empty for none) and restart_secs (its deadline).
# Defines dp_switch (prints `previous P`, `target T`, then switches and restarts) and
# dp_switch_back PREVIOUS (switches back to PREVIOUS, or removes current when empty).
# shellcheck disable=SC2154 # root, releases and the values above come before.

# current -> releases/$1 atomically: a new link renamed over the old one.
dp_link_current() {
  dp_rm "$root/.current.tmp"
  ln -s -- "releases/$1" "$root/.current.tmp"
  mv -T -- "$root/.current.tmp" "$root/current"
}
# The restart command runs in the release current points to, with DP_PREVIOUS_RELEASE
# $1. Its output goes to .dp/restart.log and then to stderr, so stdout stays dp's to
# parse and a server it leaves running cannot hold the session open (a server that must
# outlive a stopped command detaches: setsid).
dp_restart() {
  [ -n "$restart" ] || return 0
  cd -P "$root/current" || exit 1
  dp_release_env "${PWD##*/}" "$1"
  dp_deadline "$restart_secs" 'the restart command' "$root/.dp/restart.log" sh -c "$restart"
  echo "restarted"
}
dp_switch() {
  dp_current
  prev=$dp_cur_rel
  if [ "$mode" = current ]; then
    [ -n "$prev" ] || { echo "no live release on this host (no current): nothing to restart" >&2; exit 3; }
    target=$prev
  elif [ -z "$target" ]; then
    target=$(dp_prev_live "$prev")
    [ -n "$target" ] || { echo "no release to roll back to: none other than ${prev:-(none)} went live on this host and is still on disk (see .dp/history.jsonl; dp rollback --to RELEASE picks one)" >&2; exit 5; }
  fi
  echo "previous $prev"
  echo "target $target"
  [ -f "$releases/$target/.dp/complete" ] || { echo "release $target is not complete on this host; it cannot go live" >&2; exit 3; }
  if [ "$mode" = rollback ] && [ "$prev" = "$target" ]; then echo "already live"; exit 0; fi
  if [ "$mode" != current ]; then
    [ "$prev" = "$target" ] || dp_link_current "$target"
    echo "switched"
  fi
  dp_restart "$prev"
}
dp_switch_back() {
  if [ -z "$1" ]; then
    rm -f -- "$root/current"
    echo "removed current"
    return 0
  fi
  dp_link_current "$1"
  echo "switched back"
  dp_restart "${prev:-}"
}
