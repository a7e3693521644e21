#!/usr/bin/env bash
# Connect + authenticate + run `true` on N sshd hosts (default 20), three ways, in one run,
# alternating: `dp-hosts --check`, a sequential OpenSSH loop, and `xargs -P N ssh`.
# Then the raw throughput of each cipher libssh2 offers, to back the preference order.
# Usage: scripts/bench/hosts.sh [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
n=${1:-20} runs=${2:-7}
bin=target/release
cargo build --release --locked --bin dp-hosts --example ssh_pipe
work=$(mktemp -d)
trap 'scripts/fleet.sh stop "$work/light"; scripts/fleet.sh stop "$work/rc"; rm -rf "$work"' EXIT

# measure LABEL FLEETDIR: the three ways, alternating, medians and ratios.
measure() {
    local label=$1 f=$2 names
    names=$(cut -d' ' -f1 "$f/hosts.txt")
    dp_check() { $bin/dp-hosts -c "$f/deploy.toml" --check --jobs "$n"; }
    ssh_seq() { for h in $names; do ssh -F "$f/ssh_config" "$h" true; done; }
    ssh_xargs() { echo "$names" | xargs -P "$n" -I{} ssh -F "$f/ssh_config" {} true; }
    dp_check >/dev/null || { echo "bench: fleet $f not reachable" >&2; exit 1; }
    for _ in $(seq 1 "$runs"); do
        time_cmd dp_check >>"$f/t.dp"
        time_cmd ssh_seq >>"$f/t.seq"
        time_cmd ssh_xargs >>"$f/t.xargs"
    done
    local dp seq xa
    dp=$(median <"$f/t.dp") seq=$(median <"$f/t.seq") xa=$(median <"$f/t.xargs")
    echo "connect+auth+true on $n hosts, $label, median of $runs runs (seconds):"
    printf '  %-28s %8.3f\n' "dp-hosts --check" "$dp" "openssh sequential loop" "$seq" "xargs -P $n ssh" "$xa"
    echo "  ratio dp / xargs: $(ratio "$dp" "$xa")   (target <= 0.30); dp / sequential: $(ratio "$dp" "$seq")"
}

# A deploy account whose shell starts fast, as on most servers.
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/light"
measure "login shell /bin/sh" "$work/light"
# The current user, whose shell rc may be heavy (the cost every remote command pays).
scripts/fleet.sh start "$n" "$work/rc"
rc_ms=$(ssh -F "$work/rc/ssh_config" h1 'a=$(date +%s%N); bash -ic true >/dev/null 2>&1; b=$(date +%s%N); echo $(( (b - a) / 1000000 ))' 2>/dev/null || echo "?")
measure "$(id -un)'s login shell (interactive rc start: ${rc_ms} ms)" "$work/rc"
work_fleet=$work/light
# Cipher throughput: 256 MiB through one exec channel into `cat >/dev/null`, per cipher.
record=$($bin/dp-hosts -c "$work_fleet/deploy.toml" -H h1)
echo "cipher throughput, 256 MiB into cat on h1 (median of 3, MB/s; connect excluded):"
for cipher in aes128-gcm@openssh.com aes256-gcm@openssh.com chacha20-poly1305@openssh.com aes128-ctr; do
    for _ in 1 2 3; do
        head -c 268435456 /dev/zero |
            DP_SSH_CIPHERS=$cipher target/release/examples/ssh_pipe "$record" 'cat >/dev/null' 2>&1 >/dev/null |
            awk '{print $2}'
    done | median | awk -v c="$cipher" '{printf "  %-32s %7.0f\n", c, 268.435456 / $1}'
done
for _ in 1 2 3; do
    time_cmd sh -c "head -c 268435456 /dev/zero | ssh -F '$work_fleet/ssh_config' -c chacha20-poly1305@openssh.com h1 'cat >/dev/null'"
done | median | awk '{printf "  %-32s %7.0f\n", "openssh (chacha20, with connect)", 268.435456 / $1}'
