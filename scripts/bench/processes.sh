#!/usr/bin/env bash
# Processes a host runs per redeploy: the generated ~3000-file site with one changed
# file, unchanged dependencies (a deps command, cache hit), SQL migrations with nothing
# pending (SQLite), a restart command and a health command, to one local host, counted
# as the execve calls under `strace -f` of `dp deploy` minus dp's own (the local
# transport runs each script as `sh -c`, as sshd does after the login shell's exec).
# With BASELINE=DIR (the bin directory of another build), that build is counted too.
# Usage: [BASELINE=DIR] scripts/bench/processes.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
cargo build --release --locked --bin dp
command -v strace >/dev/null || { echo "processes: needs strace" >&2; exit 2; }
work=$(mktemp -d -p "$PWD/target" bench-processes.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 scripts/bench/gen-site.py "$work/site" >/dev/null
mkdir -p "$work/site/migrations"
echo "CREATE TABLE t (id INTEGER);" >"$work/site/migrations/1_t.sql"
cat >"$work/deploy.toml" <<'TOML'
app = "processes"
source = "site"
[deps]
kind = "command"
lockfiles = ["migrations/1_t.sql"]
command = "mkdir -p \"$DP_DEPS_DIR/bin\""
[restart]
command = "echo {release} > {root}/restarted"
health_cmd = "test -f {root}/restarted"
[stages.local]
transport = "local"
hosts = [{ name = "h", root = "host" }]
TOML
export DATABASE_URL="sqlite://$work/db.sqlite3" DP_CACHE_DIR="$work/cache"
count() { # count BIN RELEASE: processes started on the host by one redeploy
    echo "$2" >"$work/site/changed.txt"
    strace -f -qq -e trace=execve -e signal=none -o "$work/trace" \
        "$1/dp" -q -c "$work/deploy.toml" deploy --release "$2" >/dev/null
    # Successful execve calls (a PATH search leaves failed ones), less dp's own.
    grep -cE 'execve\(.*\) = 0$|execve resumed>.* = 0$' "$work/trace" | awk '{print $1 - 1}'
}
"$PWD/target/release/dp" -q -c "$work/deploy.toml" deploy --release r0 >/dev/null
for i in $(seq 1 "$runs"); do
    echo "this build: $(count "$PWD/target/release" "a$i") processes per redeploy"
    if [ -n "${BASELINE:-}" ]; then
        echo "baseline:   $(count "$BASELINE" "b$i") processes per redeploy"
    fi
done
