# shellcheck shell=sh
# The app log's last lines on a host whose restart or health check failed (see lib.rs,
# app_log_tail). Set before this file: log (its path) and lines (how many). Bounded: a
# log on a hung network mount does not hold the failed host's report.
# shellcheck disable=SC2154 # log and lines come before.

timeout -k 2 10 tail -n "$lines" -- "$log" 2>&1 || true
