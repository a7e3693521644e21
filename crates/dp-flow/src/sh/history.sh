# shellcheck shell=sh
# `dp history` on a host (see admin.rs): the last n lines of .dp/history.jsonl.
# shellcheck disable=SC2154 # root and n come before.

if [ -f "$root/.dp/history.jsonl" ]; then tail -n "$n" -- "$root/.dp/history.jsonl"; fi
