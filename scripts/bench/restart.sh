#!/usr/bin/env bash
# dp-restart on N loopback sshd hosts (default 20) with --batch 25% and a health check
# that answers at once: total rollout time (including the finish: cleanup, history,
# unlock) and the risk window (first switch to last switch). Target: under 2 s.
# Usage: scripts/bench/restart.sh [RUNS] [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5} n=${2:-20}
cargo build --release --locked --bin dp-hosts --bin dp-sync --bin dp-restart
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-bench.XXXXXX)
chmod 755 "$work"
hpid=
trap '[ -z "$hpid" ] || kill $hpid 2>/dev/null || true; scripts/fleet.sh stop "$work/fleet"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
mkdir -p "$work/src" && echo 1 >"$work/src/VERSION"
chmod -R a+rX "$work/src"
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/src" && exec python3 -m http.server "$hport" --bind 127.0.0.1 >/dev/null 2>&1) &
hpid=$!
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$hport/VERSION')" 2>/dev/null; do sleep 0.1; done
$bin/dp-hosts -c "$f/deploy.toml" >"$work/hosts.json"
args=(--batch 25% --jobs "$n" --health-url "http://127.0.0.1:$hport/VERSION" --command 'echo {release} > ../../restarted')
for i in $(seq 0 "$runs"); do
    echo "$i" >"$work/src/VERSION"
    $bin/dp-sync --src "$work/src" --release "r$i" --jobs "$n" <"$work/hosts.json" >"$work/synced.json"
    if [ "$i" = 0 ]; then $bin/dp-restart "${args[@]}" <"$work/synced.json" >/dev/null; continue; fi
    time_cmd sh -c "$bin/dp-restart ${args[*]@Q} <'$work/synced.json' >'$work/out.json'" >>"$work/t"
    python3 -c '
import json, sys
s = [json.loads(l)["steps"]["restart"] for l in open(sys.argv[1])]
assert all(x["healthy"] for x in s), s
at = [x["switched_at_ms"] for x in s]
print((max(at) - min(at)) / 1000)' "$work/out.json" >>"$work/w"
done
echo "rollout to $n hosts, --batch 25%, median of $runs runs:"
printf '  total %.3f s (target < 2 s)   risk window (first to last switch) %.3f s\n' "$(median <"$work/t")" "$(median <"$work/w")"
