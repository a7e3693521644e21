#!/usr/bin/env bash
# Network round trips of a deploy, apart from this machine's CPU: runs wan.sh at a low
# and a high round trip (LOW, HIGH ms; default 2 and 100) and prints, for each of its
# rows, the slope (seconds at HIGH - seconds at LOW) / (HIGH - LOW): the round trips that
# grow with the distance to the hosts. What is left at LOW is CPU (the proxy's included).
# RUNS, JOBS and BASELINE are passed to wan.sh.
# Usage: [LOW=2] [HIGH=100] [RUNS=5] [BASELINE=DIR] scripts/bench/rtt.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-4} low=${LOW:-2} high=${HIGH:-100}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/bench/wan.sh "$n" "$low" >"$work/low"
scripts/bench/wan.sh "$n" "$high" >"$work/high"
# Rows look like "WHAT   1.234 s   12.3 round trips".
rows() { sed -n 's/^\(.*[^ ]\)  *\([0-9.]*\) s  .*round trips$/\1|\2/p' "$1"; }
echo "round trips by slope between $low and $high ms, $n hosts"
join -t'|' <(rows "$work/low" | sort -t'|' -k1,1) <(rows "$work/high" | sort -t'|' -k1,1) |
    awk -F'|' -v lo="$low" -v hi="$high" '{printf "%-44s %5.1f round trips, %.3f s at %s ms\n", $1, ($3 - $2) * 1000 / (hi - lo), $2, lo}'
