# shellcheck shell=sh
# `dp unlock` on a host (see admin.rs): removes the deploy lock, printing `held LINE`
# (who held it), or `free`.
# shellcheck disable=SC2154 # root comes before.

dp_lock_read
if [ -n "$dp_cur" ] || [ -e "$root/.dp/lock" ]; then
  printf 'held %s\n' "$dp_cur"
  rm -f -- "$root/.dp/lock"
else
  echo "free"
fi
