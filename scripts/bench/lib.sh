# Shared helpers for the benchmark scripts (sourced, not run).

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# time_cmd CMD...: run CMD, print its wall time in seconds (on failure, what it said).
time_cmd() {
    local t0 t1 err
    err=$(mktemp)
    t0=$(now)
    "$@" >/dev/null 2>"$err" || { echo "bench: command failed: $*" >&2; tail -n 20 "$err" >&2; rm -f "$err"; return 1; }
    rm -f "$err"
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f\n", b - a}' 
}

# median: read numbers on stdin, print the median.
median() {
    sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# ratio A B: A/B to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f\n", a / b}'; }
