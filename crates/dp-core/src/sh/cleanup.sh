# shellcheck shell=sh
# dp_cleanup KEEP PREVIOUS: what a finished deploy may remove (see layout::CLEANUP_SH).
# shellcheck disable=SC2154 # root and releases come before.

dp_cleanup() {
  dp_keep=$1 dp_prev=$2
  dp_current
  if [ -d "$releases" ]; then
    # Complete releases beyond the newest $dp_keep (by completion time), with the shell's
    # own -nt test: each pass takes out the newest of those left.
    dp_left=
    for f in "$releases"/*/.dp/complete; do
      [ -f "$f" ] || continue
      d=${f%/.dp/complete}
      dp_left="$dp_left ${d##*/}"
    done
    n=0
    while [ -n "$dp_left" ]; do
      newest=
      for d in $dp_left; do
        # Ties go to the later name (ids start with their time). -nt: in POSIX.1-2024,
        # and in dash, bash and BusyBox ash before it.
        # shellcheck disable=SC3013
        if [ -z "$newest" ] || ! [ "$releases/$newest/.dp/complete" -nt "$releases/$d/.dp/complete" ]; then newest=$d; fi
      done
      dp_rest=
      for d in $dp_left; do [ "$d" = "$newest" ] || dp_rest="$dp_rest $d"; done
      dp_left=$dp_rest
      n=$((n + 1))
      if [ "$n" -gt "$dp_keep" ] && [ "$newest" != "$dp_cur_rel" ] && [ "$newest" != "$dp_prev" ]; then
        # Renamed away at once (it leaves the list of releases atomically), deleted below.
        mv "$releases/$newest" "$releases/.trash-$newest.$$" && echo "removed release $newest"
      fi
    done
    for d in "$releases"/.tmp-* "$releases"/.incoming-*; do
      [ -e "$d" ] && rm -rf "$d" && echo "removed leftover ${d##*/}"
    done
  fi
  # Dependency environments no remaining release uses (one being built has its lock).
  deps="$root/.dp/deps"
  if [ -d "$deps" ]; then
    used=" "
    for f in "$releases"/*/.dp/deps-key; do
      k=
      [ -f "$f" ] && IFS= read -r k < "$f" && used="$used$k "
    done
    for d in "$deps"/*; do
      [ -d "$d" ] || continue
      k=${d##*/}
      case $k in *.lock) continue ;; esac
      case $used in *" $k "*) continue ;; esac
      [ -d "$d.lock" ] && continue
      rm -rf "$d" "$d.log" && echo "removed deps $k"
    done
  fi
  # Unlinking thousands of files takes a while: it goes on in the background, after
  # the deploy has returned (a deletion cut short is finished by the next one).
  for d in "$releases"/.trash-*; do
    [ -e "$d" ] || continue
    ( cd "$releases" && exec rm -rf ./.trash-* ) </dev/null >/dev/null 2>&1 &
    break
  done
}
