#!/usr/bin/env bash
# dp-sync against rsync and tar|ssh, in one run, on loopback sshd hosts whose deploy
# roots live on tmpfs. Usage: scripts/bench/sync.sh [RUNS] [HOSTS]
#
#  1. full upload of the generated ~3000-file, ~40 MB site to 1 host: dp-sync vs
#     `tar | ssh tar -x` vs `rsync -a` (target: dp <= 1.0x the tar pipe)
#  2. new release after 1 and after 50 changed files: dp-sync vs `rsync -a --link-dest`
#     (target: dp <= 0.5x rsync's wall time; bytes sent+received <= rsync's)
#  3. full upload to HOSTS (20) hosts: dp-sync vs `xargs -P 20 rsync` (target <= 0.6x)
#  4. no-change redeploy (new release id, same content) to 20 hosts (target < 1 s)
#  5. a 2 GiB file to 1 host: dp-sync's peak RSS (target < 100 MiB)
# SECTIONS="2 4" runs only those parts. With BASELINE=DIR (the bin directory of another
# build), parts 3 and 4 also time that build's dp-sync.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5} n=${2:-20}
sections=" ${SECTIONS:-1 2 3 4 5} "
want() { case $sections in *" $1 "*) return 0 ;; esac; return 1; }
for tool in rsync /usr/bin/time; do
    command -v "$tool" >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq rsync time >/dev/null; }
done
cargo build --release --locked --bin dp-hosts --bin dp-sync
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-bench.XXXXXX)
trap 'scripts/fleet.sh stop "$work/fleet"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
cfg=$f/ssh_config
site=$work/site
python3 scripts/bench/gen-site.py "$site"
echo "site: $(find "$site" -type f | wc -l) files, $(du -sb "$site" | cut -f1) bytes; $n hosts; median of $runs runs"
user=$(awk '/^  User/{print $2; exit}' "$cfg")
root_of() { awk -v h="$1" '$1==h{print "'"$f"'/" h "/root"}' "$f/hosts.txt"; }
as_user() { if [ "$user" = "$(id -un)" ]; then "$@"; else su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"; fi; }
records() { $bin/dp-hosts -c "$f/deploy.toml" "$@"; }
unlock_all() { rm -f "$f"/h*/root/.dp/lock; }
clean_all() { rm -rf "$f"/h*/root/* "$f"/h*/root/.dp; }
dp_sync() { # RELEASE HOST-ARGS...: sync, print sent+received bytes of the first host
    local rel=$1; shift
    records "$@" | ${sync_bin:-$bin}/dp-sync --src "$site" --release "$rel" --jobs "$n" >"$work/out.json"
    unlock_all
}
wire() { python3 -c 'import json,sys; s=[json.loads(l)["steps"]["sync"] for l in open(sys.argv[1])]; print(s[0]["bytes_sent"]+s[0]["bytes_received"])' "$work/out.json"; }

r1=$(root_of h1)
if want 1; then
echo "1. full upload to 1 host (seconds)"
for i in $(seq 1 "$runs"); do
    clean_all
    time_cmd dp_sync "full$i" -H h1 >>"$work/full.dp"
    clean_all
    time_cmd sh -c "tar -C '$site' -cf - . | ssh -F '$cfg' h1 'mkdir -p $r1/t && tar -C $r1/t -xf -'" >>"$work/full.tar"
    clean_all
    time_cmd rsync -a -e "ssh -F $cfg" "$site/" "h1:$r1/r/" >>"$work/full.rsync"
done
dp=$(median <"$work/full.dp") tp=$(median <"$work/full.tar") rs=$(median <"$work/full.rsync")
printf '   dp-sync %.3f   tar|ssh %.3f   rsync -a %.3f   dp/tar %s (target <= 1.0)   dp/rsync %s\n' \
    "$dp" "$tp" "$rs" "$(ratio "$dp" "$tp")" "$(ratio "$dp" "$rs")"

fi
want 2 && for changes in 1 50; do
    echo "2. new release after $changes changed files (seconds; bytes sent+received)"
    clean_all
    dp_sync base -H h1
    rsync -a -e "ssh -F $cfg" "$site/" "h1:$r1/rbase/"
    : >"$work/inc.dp"; : >"$work/inc.rsync"; : >"$work/wire.dp"; : >"$work/wire.rsync"
    for i in $(seq 1 "$runs"); do
        python3 scripts/bench/gen-site.py "$site" --change "$changes" --seed "$((changes * 100 + i))"
        time_cmd dp_sync "c$changes-$i" -H h1 >>"$work/inc.dp"
        wire >>"$work/wire.dp"
        t0=$(now)
        rsync -a --stats --link-dest="$r1/rbase" -e "ssh -F $cfg" "$site/" "h1:$r1/r$changes-$i/" >"$work/rsync.out"
        t1=$(now)
        awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f\n", b - a}' >>"$work/inc.rsync"
        awk '/Total bytes sent|Total bytes received/ {gsub(",", "", $4); s += $4} END {print s}' "$work/rsync.out" >>"$work/wire.rsync"
    done
    dp=$(median <"$work/inc.dp") rs=$(median <"$work/inc.rsync")
    wd=$(median <"$work/wire.dp") wr=$(median <"$work/wire.rsync")
    printf '   dp-sync %.3f s %s B   rsync --link-dest %.3f s %s B   time %s (target <= 0.5)   bytes %s (target <= 1.0)\n' \
        "$dp" "$wd" "$rs" "$wr" "$(ratio "$dp" "$rs")" "$(ratio "$wd" "$wr")"
done

if want 3; then
echo "3. full upload to $n hosts (seconds)"
names=$(cut -d' ' -f1 "$f/hosts.txt")
for i in $(seq 1 "$runs"); do
    clean_all
    time_cmd dp_sync "fleet$i" >>"$work/fleet.dp"
    clean_all
    time_cmd sh -c "echo '$names' | tr ' ' '\n' | xargs -P $n -I{} sh -c 'rsync -a -e \"ssh -F $cfg\" $site/ {}:$f/{}/root/r/'" >>"$work/fleet.rsync"
done
dp=$(median <"$work/fleet.dp") rs=$(median <"$work/fleet.rsync")
printf '   dp-sync %.3f   xargs -P %s rsync %.3f   dp/rsync %s (target <= 0.6)\n' "$dp" "$n" "$rs" "$(ratio "$dp" "$rs")"
if [ -n "${BASELINE:-}" ]; then
    for i in $(seq 1 "$runs"); do
        clean_all
        sync_bin=$BASELINE time_cmd dp_sync "fleetb$i" >>"$work/fleet.base"
    done
    base=$(median <"$work/fleet.base")
    printf '   baseline dp-sync %.3f   baseline/rsync %s   this/baseline %s\n' "$base" "$(ratio "$base" "$rs")" "$(ratio "$dp" "$base")"
fi

fi
if want 4; then
echo "4. no-change redeploy to $n hosts (seconds)"
clean_all
dp_sync same0
for i in $(seq 1 "$runs"); do time_cmd dp_sync "same$i" >>"$work/same.dp"; done
for i in $(seq 1 "$runs"); do time_cmd dp_sync "same$runs" >>"$work/rerun.dp"; done
printf '   new release id %.3f (target < 1)   same id again (no-op) %.3f\n' "$(median <"$work/same.dp")" "$(median <"$work/rerun.dp")"
if [ -n "${BASELINE:-}" ]; then
    for i in $(seq 1 "$runs"); do
        time_cmd dp_sync "this$i" >>"$work/this.dp"
        sync_bin=$BASELINE time_cmd dp_sync "base$i" >>"$work/base.dp"
    done
    this=$(median <"$work/this.dp") base=$(median <"$work/base.dp")
    printf '   this build %.3f   baseline %.3f   ratio %sx\n' "$this" "$base" "$(ratio "$this" "$base")"
fi

fi
want 5 || exit 0
echo "5. one 2 GiB file to 1 host: peak RSS"
clean_all
mkdir -p "$work/big"
head -c $((2 << 30)) /dev/urandom >"$work/big/big.bin" 2>/dev/null || true
records -H h1 >"$work/h1.json"
/usr/bin/time -f '%M %e' -o "$work/rss" $bin/dp-sync --src "$work/big" --release big <"$work/h1.json" >/dev/null
read -r kb secs <"$work/rss"
printf '   peak RSS %d MiB (target < 100), %.1f s\n' "$((kb / 1024))" "$secs"
