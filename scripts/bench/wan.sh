#!/usr/bin/env bash
# Round trips: N loopback sshd hosts (default 20) behind a proxy of the project's own
# (delay_proxy.py) that delays each direction by RTT/2 ms (default RTT 50), with the
# generated 300-file site, batch 25%, restart command `true`, a health command `true`.
# Medians of RUNS (5) of:
#   - `ssh h1 true` (OpenSSH client);
#   - `ssh hN true` to the N hosts at once (OpenSSH client, with dp's key exchange
#     curve25519-sha256): a connection and a command per host, the floor under any
#     deploy to them from this machine;
#   - dp deploy to one host: no change (already live), and one changed file;
#   - dp deploy to N hosts, one changed file;
#   - a hand-scripted parallel `rsync -a --link-dest` + `ssh` switch to the N hosts,
#     the same change (the baseline).
# Each with its time in round trips (wall / RTT). With BASELINE=DIR (the bin directory of
# another build), that build's dp deploys alternate with this one's on the same hosts.
# JOBS sets dp's --jobs (64).
# Usage: [RUNS=5] [JOBS=64] [BASELINE=DIR] scripts/bench/wan.sh [N] [RTT_MS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
n=${1:-20} rtt=${2:-50} runs=${RUNS:-5}
command -v rsync >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq rsync >/dev/null; }
cargo build --release --locked --bin dp >&2
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-wan.XXXXXX)
chmod 755 "$work"
ppid_=
trap '[ -z "$ppid_" ] || kill $ppid_ 2>/dev/null || true; '"$PWD"'/scripts/fleet.sh stop "$work/fleet"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
python3 scripts/bench/gen-site.py "$work/site" --files 300 >/dev/null
chmod -R a+rX "$work/site"

# One proxy port per host; the configs name the proxy's ports.
pairs=() 
cp "$f/known_hosts" "$work/known_hosts"
cp "$f/ssh_config" "$work/ssh_config"
cp "$f/deploy.toml" "$work/fleet.toml"
while read -r _ port; do
    p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    pairs+=("$p:$port")
    sed -i "s/\]:$port /]:$p /" "$work/known_hosts"
    sed -i "s/^  Port $port\$/  Port $p/" "$work/ssh_config"
    sed -i "s/port = $port,/port = $p,/" "$work/fleet.toml"
done <"$f/hosts.txt"
sed -i "s|$f/known_hosts|$work/known_hosts|" "$work/ssh_config" "$work/fleet.toml"
python3 scripts/bench/delay_proxy.py "$(awk -v r="$rtt" 'BEGIN {print r / 2}')" "${pairs[@]}" >"$work/proxy.out" &
ppid_=$!
for _ in $(seq 1 100); do grep -q ready "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
config() { # config FILE HOSTS: deploy.toml for the first HOSTS hosts
    {
        echo "app = \"wan\""
        echo "source = \"$work/site\""
        echo "keep = 3"
        sed -n '/^known_hosts/p; /^identity/p' "$work/fleet.toml"
        echo '[restart]'
        echo 'batch = "25%"'
        echo 'command = "true"'
        echo 'health_cmd = "true"'
        sed -n '/^\[stages/,/^hosts = \[/p' "$work/fleet.toml"
        grep '^  { name' "$work/fleet.toml" | head -n "$2"
        echo "]"
    } >"$1"
}
config "$work/one.toml" 1
config "$work/all.toml" "$n"
dp() { "$bin/dp" --jobs "${JOBS:-64}" "$@"; }
# The baseline build, with a cache of its own (what it remembers is its own).
base() { DP_CACHE_DIR=$work/cache-base "$BASELINE/dp" --jobs 64 "$@"; }
dp -c "$work/one.toml" deploy >/dev/null 2>&1
dp -c "$work/all.toml" deploy >/dev/null 2>&1
names=$(cut -d' ' -f1 "$f/hosts.txt")
seq_=0
change() { seq_=$((seq_ + 1)); python3 scripts/bench/gen-site.py "$work/site" --files 300 --change 1 --seed "$seq_" >/dev/null; }
# The baseline, in a root of its own on each host (hN/root/base): per host in parallel,
# rsync into a new release linked against current, then one ssh that switches current
# atomically and runs the restart and health commands.
baseline() {
    local rel=b$seq_
    echo "$names" | tr ' ' '\n' | xargs -P "$n" -I{} sh -c \
        "root=$f/{}/root/base && rsync -a --link-dest=\"\$root/current/\" -e 'ssh -F $work/ssh_config' $work/site/ {}:\"\$root/releases/$rel/\" &&
         ssh -F $work/ssh_config {} \"cd \$root && ln -sfn releases/$rel .current.tmp && mv -T .current.tmp current && true && true\""
}
ssh_all() {
    echo "$names" | tr ' ' '\n' | xargs -P "$n" -I{} \
        ssh -F "$work/ssh_config" -o KexAlgorithms=curve25519-sha256 {} true
}
for h in $names; do
    mkdir -p "$f/$h/root/base/releases" && cp -a "$work/site" "$f/$h/root/base/releases/b0"
    ln -sfn releases/b0 "$f/$h/root/base/current"
    [ "$(id -u)" != 0 ] || chown -R "${BENCH_USER:-dp-bench}" "$f/$h/root/base"
done
for _ in $(seq 1 "$runs"); do
    time_cmd ssh -F "$work/ssh_config" h1 true >>"$work/t.ssh"
    time_cmd ssh_all >>"$work/t.ssh-all"
    time_cmd dp -c "$work/one.toml" deploy >>"$work/t.one-nochange"
    change
    time_cmd dp -c "$work/one.toml" deploy >>"$work/t.one-file"
    time_cmd dp -c "$work/all.toml" deploy >>"$work/t.all-file"
    if [ -n "${BASELINE:-}" ]; then
        time_cmd base -c "$work/one.toml" deploy >>"$work/t.base-one-nochange"
        change
        time_cmd base -c "$work/one.toml" deploy >>"$work/t.base-one-file"
        time_cmd base -c "$work/all.toml" deploy >>"$work/t.base-all-file"
        # This build again after the baseline's deploy: what it remembers is stale once.
        time_cmd dp -c "$work/one.toml" deploy >/dev/null
        time_cmd dp -c "$work/all.toml" deploy >/dev/null
    fi
    change
    time_cmd baseline >>"$work/t.baseline"
done
report() { # report WHAT FILE
    local m
    m=$(median <"$work/$2")
    printf '%-44s %7.3f s  %5.1f round trips\n' "$1" "$m" "$(awk -v m="$m" -v r="$rtt" 'BEGIN {print m * 1000 / r}')"
}
echo "round trip $rtt ms, $n hosts, medians of $runs"
report "ssh h1 true" t.ssh
report "ssh hN true, $n hosts at once" t.ssh-all
report "dp deploy, 1 host, no change" t.one-nochange
report "dp deploy, 1 host, 1 file" t.one-file
report "dp deploy, $n hosts, 1 file, batch 25%" t.all-file
report "rsync --link-dest + ssh switch, $n hosts" t.baseline
echo "dp / baseline ($n hosts): $(ratio "$(median <"$work/t.all-file")" "$(median <"$work/t.baseline")")"
if [ -n "${BASELINE:-}" ]; then
    report "BASELINE dp deploy, 1 host, no change" t.base-one-nochange
    report "BASELINE dp deploy, 1 host, 1 file" t.base-one-file
    report "BASELINE dp deploy, $n hosts, 1 file" t.base-all-file
    echo "this / BASELINE: 1 host $(ratio "$(median <"$work/t.one-file")" "$(median <"$work/t.base-one-file")"), $n hosts $(ratio "$(median <"$work/t.all-file")" "$(median <"$work/t.base-all-file")")"
fi
