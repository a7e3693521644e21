# shellcheck shell=sh
# dp's shell helpers: the start of every script dp runs on a host, after the
# assignments `root=...` and `releases=...` (see layout::Script, which sends of these
# functions only those a script uses).
#
# Each program a script starts costs the host about a millisecond, so `mkdir` and `rm`
# start only when there is work for them, and the deploy lock is read with the shell
# alone.
# - `dp_mkdir DIR...`: creates the directories unless all exist.
# - `dp_rm PATH...`: removes the paths unless none exists (dangling links count).
# - `dp_current`: sets `dp_cur_rel` to the release `current` points to (empty if none).
# - `dp_release_env RELEASE [PREVIOUS]`: exports DP_RELEASE, DP_ROOT and
#   DP_PREVIOUS_RELEASE for the commands dp runs on a host: PREVIOUS, or without it the
#   release `current` points to now; empty when it is RELEASE itself.
# - `dp_deps_path RELEASE_DIR`: puts the programs of the release's dependency
#   environment first on PATH (the directory dp-deps recorded in .dp/deps-bin: .venv/bin,
#   node_modules/.bin, or LINK/bin for a command; before that record, the first two).
# - `dp_write_file FILE FORMAT [ARG...]`: printf's output into FILE; when that fails,
#   the same again through cat, which names the cause (dash's printf says only "I/O
#   error"; a full disk, say).
# - `dp_lock_read`: sets `dp_cur` to the deploy lock's line (empty without a lock).
# - `dp_lock_is RELEASE`: true if the deploy lock names RELEASE (`dp_lock_read` first).
# - `dp_unlock RELEASE`: removes the deploy lock if RELEASE holds it (printing
#   `lock released`).
# - `dp_newest`: sets `dp_new` to the newest complete release (by the time of its
#   .dp/complete; ties go to the later name, as ids start with their time), empty if none.
# - `dp_by_age`: sets `dp_list` to the complete releases, newest first as `dp_newest`
#   orders them, separated by spaces (release ids have none).
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
#   deadline, 143 when dp went away). With dp_live set (dp --verbose) and a tail that can
#   follow a process (GNU), LOG is copied to stderr as it grows instead of at the end.
#
# The helpers set and use only names that start with dp_: the scripts' own variables are
# theirs.
# shellcheck disable=SC2154 # root and releases are assigned before this file.

dp_mkdir() { for dp_d; do [ -d "$dp_d" ] || { mkdir -p -- "$@"; return; }; done; }
dp_rm() { for dp_p; do if [ -e "$dp_p" ] || [ -L "$dp_p" ]; then rm -rf -- "$@"; return; fi; done; }
# shellcheck disable=SC2059 # the format is the caller's.
dp_write_file() { dp_wf=$1; shift; printf "$@" > "$dp_wf" || printf "$@" | cat > "$dp_wf"; }
dp_lock_read() { dp_cur=; IFS= read -r dp_cur 2>/dev/null < "$root/.dp/lock" || true; }
dp_lock_is() { dp_lock_read; case $dp_cur in *\"release\":\"$1\",*) return 0 ;; esac; return 1; }
dp_unlock() { if dp_lock_is "$1"; then rm -f -- "$root/.dp/lock"; echo "lock released"; fi; }
# shellcheck disable=SC2034 # dp_cur_rel is dp_current's result.
dp_current() { dp_cur_rel=; if [ -L "$root/current" ] && dp_here=$PWD && cd -P "$root/current" 2>/dev/null; then dp_cur_rel=${PWD##*/}; cd "$dp_here" 2>/dev/null || cd /; fi; }
# With the shell's own -nt test (POSIX.1-2024; dash, bash and BusyBox ash before it).
# shellcheck disable=SC3013
dp_newest() {
  dp_new=
  for dp_f in "$releases"/*/.dp/complete; do
    [ -f "$dp_f" ] || continue
    if [ -z "$dp_new" ] || ! [ "$releases/$dp_new/.dp/complete" -nt "$dp_f" ]; then
      dp_new=${dp_f%/.dp/complete}; dp_new=${dp_new##*/}
    fi
  done
}
# shellcheck disable=SC3013
dp_by_age() {
  dp_list='' dp_left=''
  for dp_f in "$releases"/*/.dp/complete; do
    [ -f "$dp_f" ] || continue
    dp_f=${dp_f%/.dp/complete}; dp_left="$dp_left ${dp_f##*/}"
  done
  # Each pass takes out the newest of those left.
  while [ -n "$dp_left" ]; do
    dp_new='' dp_rest=''
    for dp_f in $dp_left; do
      if [ -z "$dp_new" ] || ! [ "$releases/$dp_new/.dp/complete" -nt "$releases/$dp_f/.dp/complete" ]; then dp_new=$dp_f; fi
    done
    for dp_f in $dp_left; do [ "$dp_f" = "$dp_new" ] || dp_rest="$dp_rest $dp_f"; done
    dp_left=$dp_rest dp_list="${dp_list:+$dp_list }$dp_new"
  done
}
dp_release_env() {
  if [ $# -lt 2 ]; then dp_current; set -- "$1" "$dp_cur_rel"; fi
  DP_RELEASE=$1 DP_ROOT=$root DP_PREVIOUS_RELEASE=$2
  [ "$DP_PREVIOUS_RELEASE" != "$DP_RELEASE" ] || DP_PREVIOUS_RELEASE=
  export DP_RELEASE DP_ROOT DP_PREVIOUS_RELEASE
}
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
  # Live (dp --verbose): LOG goes to stderr as it grows, where tail can follow a process.
  dp_follow=
  [ -z "${dp_live:-}" ] || ! tail --pid=$$ -n 0 -- "$dp_log" >/dev/null 2>&1 || dp_follow=1
  if [ -z "${dp_held:-}" ] && [ -z "$dp_follow" ]; then
    dp_rc=0; timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 || dp_rc=$?
  else
    [ -z "${dp_held:-}" ] || exec 3<&0
    timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 3<&- &
    dp_job=$!
    dp_watch=
    if [ -n "${dp_held:-}" ]; then
      # Ends when dp's side of this script's stdin closes; read is the shell's own.
      ( while IFS= read -r _ <&3; do :; done; kill -TERM "$dp_job" 2>/dev/null ) &
      dp_watch=$!
      exec 3<&-
    fi
    dp_tail=
    if [ -n "$dp_follow" ]; then
      tail -n +1 -s 0.1 -f --pid="$dp_job" -- "$dp_log" >&2 3<&- &
      dp_tail=$!
    fi
    dp_rc=0; wait "$dp_job" || dp_rc=$?
    [ -z "$dp_watch" ] || kill "$dp_watch" 2>/dev/null || true
    [ -z "$dp_tail" ] || wait "$dp_tail" || true
  fi
  case $dp_rc in 124|137)
    echo "$dp_what did not finish within ${dp_secs}s: stopped, with what it started" >>"$dp_log"
    [ -z "$dp_follow" ] || tail -n 1 -- "$dp_log" >&2 ;;
  esac
  [ -n "$dp_follow" ] || [ ! -s "$dp_log" ] || cat -- "$dp_log" >&2 || true
  return "$dp_rc"
}
