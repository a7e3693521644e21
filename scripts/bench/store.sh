#!/usr/bin/env bash
# A full upload of the generated ~3000-file, ~40 MB site to N loopback sshd hosts
# (default 20): streamed over SSH to each host, against through an object store
# (`[artifacts]`: a one-node Garage on loopback, scripts/garage.sh): uploaded once, each
# host fetching it. Runs alternate (streamed, store, streamed, store...); each reports the
# wall time and the bytes out of the deploying machine (from the records: bytes_sent on
# every host, plus the object uploaded), as medians of RUNS (default 3), side by side.
# With UPLINK_MBPS=M, the deploying machine's connections to the hosts and to the store
# go through delay_proxy.py with M megabits per second shared between them (a laptop's
# uplink); the hosts' fetches from the store come back unlimited.
# Usage: [UPLINK_MBPS=M] scripts/bench/store.sh [RUNS] [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-3} n=${2:-20}
cargo build --release --locked --bin dp-hosts --bin dp-sync >&2
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-store.XXXXXX)
chmod 755 "$work"
ppid_=
trap '[ -z "$ppid_" ] || kill $ppid_ 2>/dev/null || true; scripts/fleet.sh stop "$work/fleet" 2>/dev/null; scripts/garage.sh stop "$work/garage"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
scripts/garage.sh start "$work/garage"
read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY <"$work/garage/key"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
site=$work/site
python3 scripts/bench/gen-site.py "$site" >/dev/null
chmod -R a+rX "$site"
cp "$f/deploy.toml" "$work/direct.toml"
endpoint=$(cat "$work/garage/endpoint")
if [ -n "${UPLINK_MBPS:-}" ]; then
    # The configs name the proxy's ports (its known_hosts entries too); the ports are
    # held all at once while picked, so that no two are the same.
    read -r -a free < <(python3 -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' "$((n + 1))")
    pairs=()
    cp "$f/known_hosts" "$work/known_hosts"
    i=0
    while read -r _ port; do
        p=${free[$i]}; i=$((i + 1))
        pairs+=("$p:$port")
        sed -i "s/\]:$port /]:$p /" "$work/known_hosts"
        sed -i "s/port = $port,/port = $p,/" "$work/direct.toml"
    done <"$f/hosts.txt"
    sed -i "s|$f/known_hosts|$work/known_hosts|" "$work/direct.toml"
    p=${free[$i]}
    pairs+=("$p:${endpoint##*:}")
    endpoint="http://127.0.0.1:$p"
    python3 scripts/bench/delay_proxy.py 0 "${pairs[@]}" >"$work/proxy.out" &
    ppid_=$!
    for _ in $(seq 1 100); do grep -q ready "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
    grep -q ready "$work/proxy.out" || { echo "store: the proxy did not start" >&2; exit 1; }
fi
{
    cat "$work/direct.toml"
    echo '[artifacts]'
    echo 'store = "s3://dp-artifacts/bench"'
    echo "endpoint = \"$endpoint\""
    echo 'region = "garage"'
} >"$work/store.toml"
echo "site: $(find "$site" -type f | wc -l) files, $(du -sb "$site" | cut -f1) bytes; $n hosts; median of $runs runs${UPLINK_MBPS:+; uplink $UPLINK_MBPS Mbit/s}"

clean_all() { rm -rf "$f"/h*/root/* "$f"/h*/root/.dp "$DP_CACHE_DIR"; }
# upload CONFIG RELEASE: one full upload; prints "wall_s bytes_out".
upload() {
    clean_all
    local t0 t1
    t0=$(now)
    "$bin/dp-hosts" -c "$1" | "$bin/dp-sync" -c "$1" --src "$site" --release "$2" --jobs "$n" >"$work/out.json"
    t1=$(now)
    python3 - "$work/out.json" "$t0" "$t1" "$n" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert len(recs) == int(sys.argv[4]) and all(not r.get("error") for r in recs), recs
steps = [r["steps"]["sync"] for r in recs]
out = sum(s["bytes_sent"] for s in steps)
out += sum(s["store"]["bytes"] for s in steps if s.get("store", {}).get("uploaded"))
print(f"{float(sys.argv[3]) - float(sys.argv[2]):.3f} {out}")
PY
}
for i in $(seq 1 "$runs"); do
    upload "$work/direct.toml" "direct$i" >>"$work/direct"
    upload "$work/store.toml" "store$i" >>"$work/store"
done
d_wall=$(cut -d' ' -f1 "$work/direct" | median) d_out=$(cut -d' ' -f2 "$work/direct" | median)
s_wall=$(cut -d' ' -f1 "$work/store" | median) s_out=$(cut -d' ' -f2 "$work/store" | median)
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }
printf '%-22s %9s %12s\n' "full upload, $n hosts" wall_s bytes_out
printf '%-22s %9s %12s\n' "streamed over SSH" "$d_wall" "$(mb "$d_out")"
printf '%-22s %9s %12s\n' "through the store" "$s_wall" "$(mb "$s_out")"
printf 'store/streamed: wall %sx, bytes out %sx\n' "$(ratio "$s_wall" "$d_wall")" "$(ratio "$s_out" "$d_out")"
