#!/usr/bin/env bash
# dp-deps with an unchanged lockfile on N loopback sshd hosts (default 20) vs reinstalling
# (`python3 -m venv` + `pip install -r` into a fresh venv) on the same hosts, same run.
# Target: the dp-deps step under 1 s, and at least 20x faster than reinstalling.
# Usage: scripts/bench/deps.sh [RUNS] [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5} n=${2:-20}
cargo build --release --locked --bin dp-hosts --bin dp-sync --bin dp-deps
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-bench.XXXXXX)
chmod 755 "$work"
trap 'scripts/fleet.sh stop "$work/fleet"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
unset PIP_FIND_LINKS
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
mkdir -p "$work/src" "$work/wheels"
for pkg in alpha beta gamma delta epsilon; do
    python3 tests/fixtures/make_wheel.py "$work/wheels" "dp$pkg" 1.0 >/dev/null
    echo "dp$pkg==1.0" >>"$work/src/requirements.txt"
done
chmod -R a+rX "$work/src" "$work/wheels"
echo "print('app')" >"$work/src/app.py"
deps_args=(--kind pip --pip-arg=--no-index "--pip-arg=--find-links=$work/wheels" --jobs "$n")
$bin/dp-hosts -c "$f/deploy.toml" >"$work/hosts.json"
unlock_all() { rm -f "$f"/h*/root/.dp/lock; }
sync_release() { $bin/dp-sync --src "$work/src" --release "$1" --jobs "$n" <"$work/hosts.json" >"$work/synced.json"; }

# First deploy builds every environment (not measured).
sync_release r0
$bin/dp-deps "${deps_args[@]}" <"$work/synced.json" >/dev/null
unlock_all

for i in $(seq 1 "$runs"); do
    echo "# run $i" >>"$work/src/app.py"
    sync_release "r$i"
    time_cmd sh -c "$bin/dp-deps ${deps_args[*]} <'$work/synced.json' >'$work/out.json'" >>"$work/t.dp"
    grep -c '"cache":"hit"' "$work/out.json" >>"$work/hits"
    unlock_all
done
reinstall() {
    cut -d' ' -f1 "$f/hosts.txt" | xargs -P "$n" -I{} ssh -F "$f/ssh_config" {} \
        "rm -rf /tmp/dp-bench-venv-{} && python3 -m venv /tmp/dp-bench-venv-{} &&
         /tmp/dp-bench-venv-{}/bin/pip install -q --disable-pip-version-check --no-index \
         --find-links $work/wheels -r $work/src/requirements.txt" 2>/dev/null
}
time_cmd reinstall >"$work/t.re"
cut -d' ' -f1 "$f/hosts.txt" | xargs -P "$n" -I{} ssh -F "$f/ssh_config" {} "rm -rf /tmp/dp-bench-venv-{}" 2>/dev/null
dp=$(median <"$work/t.dp") re=$(cat "$work/t.re")
echo "unchanged lockfile on $n hosts (median of $runs; reinstall measured once):"
printf '  dp-deps (cache hit on %s/%s hosts)  %7.3f s   (target < 1 s)\n' "$(median <"$work/hits")" "$n" "$dp"
printf '  venv + pip install -r, xargs -P %s  %7.3f s\n' "$n" "$re"
echo "  speed-up: $(ratio "$re" "$dp")x   (target >= 20)"
