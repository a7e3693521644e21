# shellcheck shell=sh
# The deploy lock (see lock.rs): the helpers dp_lock hold|renew and dp_locked COMMAND...
# (layout::Script sends them, as those of helpers.sh, once to a script that uses them).
# Set before they are called: dp_lock_rel (the release taking the lock), dp_lock_prefix
# (the lock line up to its time), dp_lock_lease, dp_lock_third, dp_lock_poll (seconds),
# and the exit statuses dp_lock_held and dp_lock_write_failed.
# shellcheck disable=SC2154 # root, releases and the dp_lock_* values come before.

dp_lock() {
  dp_mkdir "$root/.dp" "$releases" "$root/shared"
  lock="$root/.dp/lock"
  dp_rel=$dp_lock_rel
  if dp_lock_is "$dp_rel" && [ "$1" = hold ]; then
    echo "lock held"
    return
  fi
  dp_now=$(date +%s)
  dp_info=$dp_lock_prefix"$dp_now",'"expires":'"$((dp_now + dp_lock_lease))"'}'
  # The lock is written whole to a file of this process, then linked or renamed into
  # place: it is complete or absent, never empty or partial.
  dp_write() {
    dp_write_file "$lock.$$" '%s\n' "$dp_info" && return
    rm -f -- "$lock.$$"
    echo "cannot write the deploy lock in $root/.dp (see above)" >&2
    exit "$dp_lock_write_failed"
  }
  dp_create() {
    dp_write
    if ln -- "$lock.$$" "$lock" 2>/dev/null; then rm -f -- "$lock.$$"; return 0; fi
    rm -f -- "$lock.$$"
    return 1
  }
  if ! [ -e "$lock" ] && dp_create; then
    echo "lock taken"
  elif dp_lock_is "$dp_rel"; then
    dp_write
    mv -f -- "$lock.$$" "$lock"
    echo "lock renewed"
  elif ! [ -e "$lock" ] && dp_create; then
    echo "lock taken"
  else
    if ! [ -e "$lock" ]; then
      # Not there, yet it could not be created twice over.
      echo "cannot create the deploy lock $lock: linking it into place failed (does the file system allow hard links?)" >&2
      exit "$dp_lock_write_failed"
    fi
    dp_lock_is "$dp_rel" || true
    case $dp_cur in
      *\"expires\":[0-9]*)
        dp_cur_exp=${dp_cur##*\"expires\":}
        dp_cur_exp=${dp_cur_exp%%[!0-9]*}
        ;;
      *)
        # Unreadable (left by a crash or an older version): it counts as expired a lease
        # after it was written.
        dp_written=$(date -r "$lock" +%s 2>/dev/null) || dp_written=$dp_now
        dp_cur_exp=$((dp_written + dp_lock_lease))
        printf 'dp-lock-corrupt %s %s %s\n' "$(wc -c < "$lock" 2>/dev/null || echo 0)" "$((dp_now - dp_written))" "$((dp_cur_exp - dp_now))" >&2
        ;;
    esac
    if [ "$dp_cur_exp" -lt "$dp_now" ] && mv -- "$lock" "$lock.stale.$$" 2>/dev/null; then
      dp_stale=
      IFS= read -r dp_stale 2>/dev/null < "$lock.stale.$$" || true
      if [ "$dp_stale" = "$dp_cur" ] && dp_create; then
        rm -f -- "$lock.stale.$$"
        echo "lock taken-over $dp_cur"
      else
        # Put it back only if no other deploy took the lock meanwhile (ln never overwrites).
        ln -- "$lock.stale.$$" "$lock" 2>/dev/null || true
        rm -f -- "$lock.stale.$$"
        cat -- "$lock" >&2 2>/dev/null || true
        exit "$dp_lock_held"
      fi
    else
      printf '%s\n' "$dp_cur" >&2
      exit "$dp_lock_held"
    fi
  fi
}
# dp_locked COMMAND...: runs COMMAND while a keeper renews the lease every third of it on
# the host itself (a dependency build, a migration may outlast the lease); the keeper
# stops with COMMAND, or within dp_lock_poll seconds of this script if that is killed.
dp_locked() {
  ( dp_parent=$$ dp_n=0
    while sleep "$dp_lock_poll"; do
      kill -0 "$dp_parent" 2>/dev/null || exit 0
      dp_n=$((dp_n + dp_lock_poll))
      [ "$dp_n" -ge "$dp_lock_third" ] || continue
      dp_n=0
      dp_lock renew || exit 0
    done ) </dev/null >/dev/null 2>&1 &
  dp_keeper=$! dp_lrc=0
  "$@" || dp_lrc=$?
  kill "$dp_keeper" 2>/dev/null || true
  return "$dp_lrc"
}
