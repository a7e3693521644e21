# shellcheck shell=sh
# dp's shell helpers: the start of every script dp runs on a host, after the
# assignments `root=...` and `releases=...` (see layout::script_prelude).
#
# Each program a script starts costs the host about a millisecond, so `mkdir` and `rm`
# start only when there is work for them, and the deploy lock is read with the shell
# alone.
# - `dp_mkdir DIR...`: creates the directories unless all exist.
# - `dp_rm PATH...`: removes the paths unless none exists (dangling links count).
# - `dp_current`: sets `dp_cur_rel` to the release `current` points to (empty if none).
# - `dp_deps_path RELEASE_DIR`: puts the programs of the release's dependency
#   environment first on PATH (the directory dp-deps recorded in .dp/deps-bin: .venv/bin,
#   node_modules/.bin, or LINK/bin for a command; before that record, the first two).
# - `dp_lock_is RELEASE`: true if the deploy lock names RELEASE; leaves the lock's line
#   in `$dp_cur` (empty without a lock).
# - `dp_prev_live CURRENT`: prints the release a rollback returns to, from
#   `.dp/history.jsonl`: of the releases that went live on this host (in a deploy or
#   rollback whose result was ok, or that were current when a deploy or rollback
#   started), the one live most recently, other than CURRENT and other than one a
#   rollback to an older release left (so rollbacks walk back), that is still complete
#   on disk. Prints nothing when there is none. A release that failed or never served is
#   never printed.
# - `dp_deadline SECONDS WHAT LOG COMMAND...`: runs COMMAND with stdin /dev/null and its
#   output in the file LOG (so that something it leaves running in the background cannot
#   hold the session open), then copies LOG to stderr. Past SECONDS, COMMAND is stopped
#   (TERM, then KILL 5 s later) with everything it started that did not detach into a
#   session or process group of its own (GNU timeout signals its whole process group),
#   and WHAT is named in LOG. In a script run with its stdin held (Transport::exec_held,
#   which sets dp_held), it is stopped the same way as soon as that stdin closes: dp died
#   or gave up on the host. Its status is COMMAND's (124 or 137 when stopped at the
#   deadline, 143 when dp went away).
#
# shellcheck disable=SC2154 # root and releases are assigned before this file.

dp_mkdir() { for d; do [ -d "$d" ] || { mkdir -p -- "$@"; return; }; done; }
dp_rm() { for p; do if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$@"; return; fi; done; }
dp_lock_is() { dp_cur=; IFS= read -r dp_cur 2>/dev/null < "$root/.dp/lock" || true; case $dp_cur in *\"release\":\"$1\",*) return 0 ;; esac; return 1; }
# shellcheck disable=SC2034 # dp_cur_rel is dp_current's result.
dp_current() { dp_cur_rel=; if [ -L "$root/current" ] && dp_here=$PWD && cd -P "$root/current" 2>/dev/null; then dp_cur_rel=${PWD##*/}; cd "$dp_here" 2>/dev/null || cd /; fi; }
dp_deps_path() {
  if IFS= read -r dp_bin 2>/dev/null < "$1/.dp/deps-bin"; then PATH="$1/$dp_bin:$PATH"
  else PATH="$1/.venv/bin:$1/node_modules/.bin:$PATH"; fi
  export PATH
}
dp_prev_live() {
  [ -f "$root/.dp/history.jsonl" ] || return 0
  # seq: each release's last moment live (line number; + .5 once it went live in that
  # line); first: when it first went live; struck: left by a rollback to an older one.
  awk 'function field(k) { if (match($0, "\"" k "\":\"[^\"]*\"")) return substr($0, RSTART + length(k) + 4, RLENGTH - length(k) - 5); return "" }
    { n++; rel = field("release"); prev = field("previous"); ok = ($0 ~ /"result":"ok"[,}]/)
      if (prev != "") { seq[prev] = n; if (!(prev in first)) first[prev] = n }
      if (ok && rel != "") {
        if (!(rel in first)) first[rel] = n
        if (field("action") == "rollback" && prev != "" && prev != rel && first[rel] < first[prev]) struck[prev] = 1
        seq[rel] = n + 0.5; delete struck[rel]
      } }
    END { for (r in seq) if (!(r in struck)) print seq[r], r }' "$root/.dp/history.jsonl" | sort -rn | while read -r _ dp_r; do
    if [ "$dp_r" != "$1" ] && [ -f "$releases/$dp_r/.dp/complete" ]; then printf '%s\n' "$dp_r"; break; fi
  done
}
dp_deadline() {
  dp_secs=$1 dp_what=$2 dp_log=$3; shift 3
  command -v timeout >/dev/null 2>&1 || { echo "timeout (GNU coreutils) is not installed on this host: $dp_what cannot be bounded" >&2; return 127; }
  : > "$dp_log" || { echo "cannot write $dp_log, where the output of $dp_what goes" >&2; return 1; }
  if [ -z "${dp_held:-}" ]; then
    dp_rc=0; timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 || dp_rc=$?
  else
    exec 3<&0
    timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 3<&- &
    dp_job=$!
    # Ends when dp's side of this script's stdin closes; read is the shell's own.
    ( while IFS= read -r _ <&3; do :; done; kill -TERM "$dp_job" 2>/dev/null ) &
    dp_watch=$!
    exec 3<&-
    dp_rc=0; wait "$dp_job" || dp_rc=$?
    kill "$dp_watch" 2>/dev/null || true
  fi
  case $dp_rc in 124|137) echo "$dp_what did not finish within ${dp_secs}s: stopped, with what it started" >>"$dp_log" ;; esac
  [ ! -s "$dp_log" ] || cat -- "$dp_log" >&2 || true
  return "$dp_rc"
}
