# shellcheck shell=sh
# What dp-restart's switch does next in the same exchange (see script.rs, switch), after
# dp_switch: one try of the health command hcmd (empty: no health check here), after
# `checking`, which passes when it exits 0 within hsecs and its output contains want
# (when set), printing `healthy`; then, when the host passed and finish is set,
# `finishing` and the finish (dp_finish, with the history line hist_head + release +
# previous + hist_tail), printing `finished`, or `finish failed N` with its exit status.
# The lock is given back after a finish that ran.
# shellcheck disable=SC2154 # root, dp_switch's target and prev, and the values above come before.

dp_passed=1
if [ -n "$hcmd" ]; then
  dp_passed=
  echo "checking"
  if (cd -P "$root/current" && dp_release_env "$target" "$prev" &&
      dp_deadline "$hsecs" 'the health check' "$root/.dp/health.log" sh -c "$hcmd") &&
     { [ -z "$want" ] || grep -qF -- "$want" "$root/.dp/health.log"; }; then
    echo "healthy"
    dp_passed=1
  fi
fi
if [ -n "$dp_passed" ] && [ -n "$finish" ]; then
  # Release ids are plain (layout::check_release_id): nothing to escape in JSON.
  case $prev in
    '' | *[!A-Za-z0-9._-]*) dp_p=null ;;
    *) dp_p="\"$prev\"" ;;
  esac
  case $target in
    '' | *[!A-Za-z0-9._-]*) dp_t='""' ;;
    *) dp_t="\"$target\"" ;;
  esac
  # shellcheck disable=SC2034 # dp_finish reads it.
  history="$hist_head\"release\":$dp_t,\"previous\":$dp_p,$hist_tail"
  echo "finishing"
  set +e
  (set -e; dp_finish)
  dp_rc=$?
  set -e
  if [ "$dp_rc" = 0 ]; then
    dp_unlock "$rel"
    echo "finished"
  else
    echo "finish failed $dp_rc"
  fi
fi
