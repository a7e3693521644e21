#!/usr/bin/env bash
# The deploy at fleet sizes: N loopback hosts (default 50 100 200 500), served by at most
# 25 sshd processes (scripts/fleet.sh, FLEET_SSHDS: each host its own session and root),
# a generated 300-file site, batch 25%, restart command `true`, --jobs 64. For each N:
# the connect check (dp-hosts --check), the first full deploy, the no-change redeploy (a
# new release id with the same content: every file linked, the switch, the restart, the
# finish) and a one-file redeploy. Each is
# reported as wall time, client CPU (user + system), the hosts' CPU (the whole machine's
# busy time from /proc/stat, less the client's: sshd and what the scripts start), client
# peak memory, and the process ids used per host (machine-wide, from /proc/loadavg's last
# pid: the hosts' processes, plus dp's own threads, a fixed number), then the wall time
# per host and its slope against the smallest N. The check row (a connection and one
# small command per host) is the floor under every deploy row. With BASELINE=DIR (the bin directory of another build), that
# build's no-change and one-file redeploys follow this one's at each N (with a cache of
# its own), on the same hosts.
# Usage: [BASELINE=DIR] scripts/bench/scale.sh [N...]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(50 100 200 500)
cargo build --release --locked --bin dp --bin dp-hosts >&2
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-scale.XXXXXX)
chmod 755 "$work"
trap ''"$PWD"'/scripts/fleet.sh stop "$work/fleet" 2>/dev/null; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
python3 scripts/bench/gen-site.py "$work/site" --files 300 >/dev/null
chmod -R a+rX "$work/site"

# measure CMD...: "wall cpu host_cpu peak_kib pids" of one run of CMD (which must succeed).
measure() {
    python3 - "$@" <<'PY'
import os, resource, subprocess, sys, time
def last_pid():
    return int(open("/proc/loadavg").read().split()[-1])
def busy():
    # user nice system idle iowait irq softirq steal, in clock ticks
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
p0, t0, b0 = last_pid(), time.time(), busy()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
t1, p1, b1 = time.time(), last_pid(), busy()
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode(errors="replace")[-2000:])
    sys.exit("scale: command failed: " + " ".join(sys.argv[1:]))
u = resource.getrusage(resource.RUSAGE_CHILDREN)
pid_max = int(open("/proc/sys/kernel/pid_max").read())
cpu = u.ru_utime + u.ru_stime
print(f"{t1 - t0:.3f} {cpu:.3f} {max(b1 - b0 - cpu, 0):.2f} {u.ru_maxrss} {(p1 - p0) % pid_max}")
PY
}

printf '%-5s %-16s %8s %8s %10s %9s %9s %10s\n' hosts what wall_s cpu_s host_cpu_s peak_MiB pids/host ms/host
declare -A per_host
for n in "${sizes[@]}"; do
    "$PWD/scripts/fleet.sh" stop "$work/fleet" 2>/dev/null || true
    rm -rf "$work/fleet" "$work/cache" "$work/cache-base"
    sshds=$(( n < 25 ? n : 25 ))
    FLEET_USER=${BENCH_USER:-dp-bench} FLEET_SSHDS=$sshds "$PWD/scripts/fleet.sh" start "$n" "$work/fleet" >/dev/null
    f=$work/fleet
    {
        echo "app = \"scale\""
        echo "source = \"$work/site\""
        echo "keep = 3"
        sed -n '/^known_hosts/p; /^identity/p' "$f/deploy.toml"
        echo '[restart]'
        echo 'batch = "25%"'
        echo 'command = "true"'
        sed -n '/^\[stages/,$p' "$f/deploy.toml"
    } >"$work/deploy.toml"
    row() { # row WHAT CMD...
        local what=$1; shift
        read -r wall cpu host_cpu kib pids < <(measure "$@")
        local ms
        ms=$(awk -v w="$wall" -v n="$n" 'BEGIN {printf "%.1f", w * 1000 / n}')
        printf '%-5s %-16s %8s %8s %10s %9s %9s %10s\n' "$n" "$what" "$wall" "$cpu" "$host_cpu" \
            "$((kib / 1024))" "$(awk -v p="$pids" -v n="$n" 'BEGIN {printf "%.1f", p / n}')" "$ms"
        per_host[$what,$n]=$ms
    }
    dp=("$bin/dp" --config "$work/deploy.toml" --jobs 64)
    row check "$bin/dp-hosts" --config "$work/deploy.toml" --jobs 64 --check
    row first "${dp[@]}" deploy
    row no-change "${dp[@]}" deploy
    if [ -n "${BASELINE:-}" ]; then
        # Its first deploy here builds on this one's release: then its own no-change.
        DP_CACHE_DIR=$work/cache-base "$BASELINE/dp" --config "$work/deploy.toml" --jobs 64 deploy >/dev/null 2>&1
        row base-no-change env DP_CACHE_DIR="$work/cache-base" "$BASELINE/dp" --config "$work/deploy.toml" --jobs 64 deploy
        # This build's memory is stale after that: a redeploy to make it current again.
        "${dp[@]}" deploy >/dev/null 2>&1
    fi
    python3 scripts/bench/gen-site.py "$work/site" --files 300 --change 1 --seed "$n" >/dev/null
    row one-file "${dp[@]}" deploy
    if [ -n "${BASELINE:-}" ]; then
        python3 scripts/bench/gen-site.py "$work/site" --files 300 --change 1 --seed "$((n + 7))" >/dev/null
        row base-one-file env DP_CACHE_DIR="$work/cache-base" "$BASELINE/dp" --config "$work/deploy.toml" --jobs 64 deploy
    fi
done
# Slope: how the time per host changes from the smallest fleet to the largest.
first=${sizes[0]} last=${sizes[${#sizes[@]}-1]}
for what in check first no-change one-file ${BASELINE:+base-no-change base-one-file}; do
    echo "slope $what: ${per_host[$what,$first]} ms/host at $first hosts, ${per_host[$what,$last]} at $last ($(ratio "${per_host[$what,$last]}" "${per_host[$what,$first]}")x)"
done
