# shellcheck shell=sh
# dp_cleanup KEEP PREVIOUS [ROLLBACK]: what a finished deploy may remove (see
# layout::cleanup_sh). With ROLLBACK non-empty (a rollback's finish, after its history
# line), the release the next rollback would return to stays as well.
# shellcheck disable=SC2154 # root and releases come before.

dp_cleanup() {
  dp_keep=$1 dp_prev=$2 dp_back=${3:+?}
  dp_current
  if [ -d "$releases" ]; then
    dp_by_age
    n=0
    for d in $dp_list; do
      n=$((n + 1))
      if [ "$n" -gt "$dp_keep" ] && [ "$d" != "$dp_cur_rel" ] && [ "$d" != "$dp_prev" ]; then
        # Found once, when there is something to remove (it reads the history).
        [ "$dp_back" != "?" ] || dp_back=$(dp_prev_live "$dp_cur_rel")
        [ "$d" != "$dp_back" ] || continue
        # Renamed away at once (it leaves the list of releases atomically), deleted below.
        mv -- "$releases/$d" "$releases/.trash-$d.$$" && echo "removed release $d"
      fi
    done
    for d in "$releases"/.tmp-* "$releases"/.incoming-*; do
      [ -e "$d" ] && rm -rf -- "$d" && echo "removed leftover ${d##*/}"
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
      rm -rf -- "$d" "$d.log" && echo "removed deps $k"
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
