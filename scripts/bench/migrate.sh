#!/usr/bin/env bash
# dp-migrate vs sqlx-cli on 1000 generated migrations, same run, alternating, on SQLite
# (WAL) and on a PostgreSQL cluster of its own. Usage: scripts/bench/migrate.sh [RUNS]
#  - fresh apply of 1000 (targets: <= 0.7x sqlx-cli on SQLite, <= 1.0x on PostgreSQL)
#  - no-op run with all applied (target: <= 1.5x sqlx-cli, under 30 ms)
#  - two concurrent runs (dp: both exit 0, each migration once; sqlx-cli: for reference)
# sqlx-cli is installed once under target/bench-tools (a few minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5}
cargo build --release --locked --bin dp-migrate
dp=$PWD/target/release/dp-migrate
tools=$PWD/target/bench-tools
sqlx=$tools/bin/sqlx
[ -x "$sqlx" ] || cargo install --quiet --root "$tools" sqlx-cli --no-default-features --features rustls,postgres,sqlite
work=$(mktemp -d -p /dev/shm dp-bench.XXXXXX)
chmod 755 "$work"
pgpid=
trap '[ -n "$pgpid" ] && kill -INT $pgpid 2>/dev/null; sleep 0.5; rm -rf "$work"' EXIT
python3 scripts/bench/gen-migrations.py "$work/migrations" 1000

# A PostgreSQL cluster of its own (as `postgres` when run as root).
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$work/pg" && echo secret >"$work/pg/pw"
[ "$(id -u)" = 0 ] && chown -R postgres "$work/pg"
as_pg "$bindir/initdb" -D "$work/pg/data" -U postgres --auth=scram-sha-256 --pwfile="$work/pg/pw" --no-sync >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$bindir/postgres" -D "$work/pg/data" -p "$port" -k "$work/pg" -c listen_addresses=127.0.0.1 >"$work/pg/log" 2>&1 &
pgpid=$!
until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.1; done
export PGPASSWORD=secret
pg_url() { echo "postgres://postgres:secret@127.0.0.1:$port/$1"; }
newdb() { "$bindir/psql" -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE $1" postgres; }

dp_run() { DATABASE_URL=$1 "$dp" --dir "$work/migrations" </dev/null; }
sqlx_run() { "$sqlx" migrate run --source "$work/migrations" --database-url "$1"; }
i=0
for r in $(seq 1 "$runs"); do
    for tool in dp sqlx; do
        i=$((i + 1))
        time_cmd ${tool}_run "sqlite://$work/$tool$i.db?mode=rwc" >>"$work/fresh.sqlite.$tool"
        newdb "b$i"
        time_cmd ${tool}_run "$(pg_url "b$i")" >>"$work/fresh.pg.$tool"
        for _ in 1 2 3; do time_cmd ${tool}_run "sqlite://$work/$tool$i.db?mode=rwc" >>"$work/noop.sqlite.$tool"; done
        for _ in 1 2 3; do time_cmd ${tool}_run "$(pg_url "b$i")" >>"$work/noop.pg.$tool"; done
    done
done
report() { # NAME TARGET
    local d s
    d=$(median <"$work/$1.dp") s=$(median <"$work/$1.sqlx")
    printf '  %-22s dp-migrate %7.3f s   sqlx-cli %7.3f s   ratio %s   (target %s)\n' "$1" "$d" "$s" "$(ratio "$d" "$s")" "$2"
}
echo "1000 migrations, median of $runs runs (no-op: of $((runs * 3)))"
report fresh.sqlite "<= 0.7"
report fresh.pg "<= 1.0"
report noop.sqlite "<= 1.5, < 30 ms"
report noop.pg "<= 1.5, < 30 ms"

echo "two concurrent fresh runs (exit codes; rows in _sqlx_migrations):"
for tool in dp sqlx; do
    newdb "c$tool"
    url=$(pg_url "c$tool")
    (${tool}_run "$url" >/dev/null 2>&1; echo $? >"$work/c1") &
    p1=$!
    (${tool}_run "$url" >/dev/null 2>&1; echo $? >"$work/c2") &
    p2=$!
    wait $p1 $p2 || true
    rows=$("$bindir/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -c "SELECT count(*) FROM _sqlx_migrations" "c$tool" 2>/dev/null || echo "?")
    printf '  %-10s PostgreSQL: exits %s %s, rows %s\n' "$tool" "$(cat "$work/c1")" "$(cat "$work/c2")" "$rows"
    db="$work/conc-$tool.db"
    (${tool}_run "sqlite://$db?mode=rwc" >/dev/null 2>&1; echo $? >"$work/c1") &
    p1=$!
    (${tool}_run "sqlite://$db?mode=rwc" >/dev/null 2>&1; echo $? >"$work/c2") &
    p2=$!
    wait $p1 $p2 || true
    rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from _sqlx_migrations').fetchone()[0])" "$db" 2>/dev/null || echo "?")
    printf '  %-10s SQLite:     exits %s %s, rows %s\n' "$tool" "$(cat "$work/c1")" "$(cat "$work/c2")" "$rows"
done
