# shellcheck shell=sh
# The app log's last lines on a host whose restart or health check failed (see lib.rs,
# app_log_tail). Set before this file: log (its path) and lines (how many).
# shellcheck disable=SC2154 # log and lines come before.

tail -n "$lines" -- "$log" 2>&1 || true
