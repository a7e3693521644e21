#!/usr/bin/env bash
# The Django example's redeploy with an unchanged requirements.txt on 2 hosts (local
# transport): one changed view per release; the virtualenv is reused, collectstatic and
# `manage.py migrate` run, each gunicorn master gets a HUP behind the health check.
# Reports the median wall time of `dp deploy` and the requests that failed, counted by
# a client sending GET / to both hosts directly (no load balancer to retry) throughout.
# Usage: scripts/bench/django.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5}
cargo build --release --locked --bin dp
dp=$PWD/target/release/dp
wheels=${DP_DJANGO_WHEELS:-$HOME/.cache/dp/django-wheels}
examples/django/wheels.sh "$wheels" >&2
work=$(mktemp -d -p "$PWD/target" bench-django.XXXXXX)
cleanup() {
    touch "$work/stop"
    for f in "$work"/hosts/*/gunicorn.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
    sleep 1
    rm -rf "$work"
}
trap cleanup EXIT
cp -r examples/django/site "$work/site"
rm -rf "$work/site/vendor" && mkdir -p "$work/site/vendor" && cp -r "$wheels" "$work/site/vendor/wheels"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(port) p2=$(port)
export DATABASE_URL="sqlite:///$work/db.sqlite3"
for h in web1 web2; do
    mkdir -p "$work/hosts/$h/shared"
    printf 'SECRET_KEY=bench-secret-key\nDATABASE_URL=%s\n' "$DATABASE_URL" >"$work/hosts/$h/shared/.env"
done
sed -n '/^\[stages.local\]/q;p' examples/django/deploy.toml >"$work/deploy.toml"
cat >>"$work/deploy.toml" <<TOML
[stages.local]
transport = "local"
hosts = [
  { name = "web1", root = "hosts/web1", roles = ["web", "migrate"], vars = { port = $p1 } },
  { name = "web2", root = "hosts/web2", roles = ["web"], vars = { port = $p2 } },
]
TOML
export DP_CACHE_DIR=$work/cache
"$dp" -q -c "$work/deploy.toml" deploy --release r0 >/dev/null
# The client: GET / on both hosts in turn until $work/stop exists; prints ok and failed.
client() {
    python3 - "$work/stop" "$p1" "$p2" <<'PY'
import os, sys, urllib.request
stop, ports = sys.argv[1], sys.argv[2:]
ok = failed = 0
while not os.path.exists(stop):
    for p in ports:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p}/", timeout=10).read()
            ok += 1
        except Exception as e:
            failed += 1
            print(f"failed request on port {p}: {e}", file=sys.stderr)
print(ok, failed)
PY
}
: >"$work/t"
total_ok=0 total_failed=0
for i in $(seq 1 "$runs"); do
    echo "# release $i" >>"$work/site/notes/views.py"
    rm -f "$work/stop"
    client >"$work/load" &
    cpid=$!
    sleep 0.3
    time_cmd "$dp" -q -c "$work/deploy.toml" deploy --release "r$i" >>"$work/t"
    touch "$work/stop"
    wait "$cpid"
    read -r ok failed <"$work/load"
    total_ok=$((total_ok + ok)) total_failed=$((total_failed + failed))
done
echo "Django redeploy, requirements.txt unchanged, 2 hosts, median of $runs runs:"
printf '  dp deploy %.3f s   requests during the deploys: %d ok, %d failed\n' \
    "$(median <"$work/t")" "$total_ok" "$total_failed"
