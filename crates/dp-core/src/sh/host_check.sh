# shellcheck shell=sh
# Checks that the host has what dp's scripts use beyond POSIX (see layout::host_check_sh).
# Set before this file: dp_check_always (non-empty: probe even if .dp/host-ok matches)
# and dp_unfit_status (the exit status when something is missing).
# shellcheck disable=SC2154 # root, dp_check_always and dp_unfit_status come before.

dp_mkdir "$root/.dp"
dp_ok=
if [ -z "$dp_check_always" ] && [ -f "$root/.dp/host-ok" ]; then IFS= read -r dp_ok < "$root/.dp/host-ok" || dp_ok=; fi
if [ "$dp_ok" != "v1 $PATH" ]; then
  dp_t="$root/.dp/.probe.$$" dp_miss=
  rm -rf -- "$dp_t"
  mkdir -p -- "$dp_t/a/d" "$dp_t/in/d"
  echo old > "$dp_t/a/d/f"; echo new > "$dp_t/in/d/f"
  { cp -al -- "$dp_t/a" "$dp_t/b" && cp -al --remove-destination -- "$dp_t/in/." "$dp_t/b/" &&
    IFS= read -r dp_x < "$dp_t/b/d/f" && [ "$dp_x" = new ] &&
    IFS= read -r dp_x < "$dp_t/a/d/f" && [ "$dp_x" = old ]; } >/dev/null 2>&1 ||
    dp_miss="$dp_miss; cp -al --remove-destination (GNU coreutils cp)"
  { ln -s -- a "$dp_t/l1" && mv -T -- "$dp_t/l1" "$dp_t/l2"; } >/dev/null 2>&1 || dp_miss="$dp_miss; mv -T (GNU coreutils mv)"
  (cd "$dp_t/a/d" && sha256sum f > ../sums && sha256sum --quiet --strict -c ../sums) >/dev/null 2>&1 ||
    dp_miss="$dp_miss; sha256sum --quiet --strict -c (GNU coreutils sha256sum)"
  timeout -k 1 5 true >/dev/null 2>&1 || dp_miss="$dp_miss; timeout -k (GNU coreutils timeout)"
  find "$dp_t" -maxdepth 0 -mmin +60 >/dev/null 2>&1 || dp_miss="$dp_miss; find -maxdepth -mmin (GNU findutils)"
  { (cd "$dp_t" && tar -c -f t.tar a) && mkdir -- "$dp_t/x" && tar -x -p --no-same-owner -f "$dp_t/t.tar" -C "$dp_t/x"; } >/dev/null 2>&1 ||
    dp_miss="$dp_miss; tar -x -p --no-same-owner (GNU tar)"
  date -r "$dp_t/a/d/f" +%s >/dev/null 2>&1 || dp_miss="$dp_miss; date -r (GNU coreutils date)"
  printf 'a\0' | xargs -0 true >/dev/null 2>&1 || dp_miss="$dp_miss; xargs -0 (GNU findutils xargs)"
  rm -rf -- "$dp_t"
  if [ -n "$dp_miss" ]; then
    echo "this host lacks what dp's scripts need: ${dp_miss#; }. Install GNU coreutils, findutils and tar, first on the deploy user's PATH ($PATH); BusyBox and BSD tools differ" >&2
    exit "$dp_unfit_status"
  fi
  printf 'v1 %s
' "$PATH" > "$root/.dp/host-ok"
fi
