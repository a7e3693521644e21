#!/usr/bin/env bash
# The one-line redeploy: the generated ~3000-file site with one changed file, unchanged
# dependencies (pip, cache hit), no pending migrations (SQLite), to N loopback sshd hosts
# (default 20) with --batch 25% and a health check that answers at once; `dp deploy`
# against the same deploy as the printed pipeline of the five tools, alternating.
# Targets: dp deploy under 3 s, and at least 1.5x faster than the pipeline; dp deploy
# --plan (before each deploy, the same change) under 0.5 s.
# With BASELINE=DIR (the bin directory of another build, such as an older commit's
# target/release), `dp deploy` of that build alternates with this one's on the same
# fleet, and the ratio is printed; with ALIVE_OFF=1, this build also alternates with
# itself with SSH keepalives turned off (server_alive_interval = "0s"): their cost.
# Usage: [BASELINE=DIR] [ALIVE_OFF=1] scripts/bench/deploy.sh [RUNS] [HOSTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/lib.sh
runs=${1:-5} n=${2:-20}
cargo build --release --locked
bin=$PWD/target/release
work=$(mktemp -d -p /dev/shm dp-bench.XXXXXX)
chmod 755 "$work"
hpid=
trap '[ -z "$hpid" ] || kill $hpid 2>/dev/null || true; '"$PWD"'/scripts/fleet.sh stop "$work/fleet"; rm -rf "$work"' EXIT
export DP_CACHE_DIR=$work/cache PATH="$bin:$PATH"
unset PIP_FIND_LINKS
FLEET_USER=${BENCH_USER:-dp-bench} scripts/fleet.sh start "$n" "$work/fleet" >/dev/null
f=$work/fleet
site=$work/site
python3 scripts/bench/gen-site.py "$site"
python3 tests/fixtures/make_wheel.py "$site/vendor/wheels" dpbenchdep 1.0 >/dev/null
echo "dpbenchdep==1.0" >"$site/requirements.txt"
mkdir -p "$site/migrations"
echo "CREATE TABLE visits (id INTEGER PRIMARY KEY);" >"$site/migrations/1_visits.sql"
chmod -R a+rX "$site"
export DATABASE_URL="sqlite://$work/db.sqlite3"
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$site" && exec python3 -m http.server "$hport" --bind 127.0.0.1 >/dev/null 2>&1) &
hpid=$!
# deploy.toml: the fleet's hosts and SSH settings, plus the deploy settings.
{
    echo "app = \"bench\""
    echo "source = \"$site\""
    echo "keep = 3"
    sed -n '/^known_hosts/p; /^identity/p' "$f/deploy.toml"
    echo '[deps]'
    echo 'kind = "pip"'
    echo 'pip_args = ["--no-index", "--find-links", "vendor/wheels"]'
    echo '[restart]'
    echo 'batch = "25%"'
    echo 'command = "echo {release} > ../../restarted"'
    echo "health_url = \"http://127.0.0.1:$hport/manage.py\""
    sed -n '/^\[stages/,$p' "$f/deploy.toml"
} >"$work/deploy.toml"
cd "$work"
dp --config deploy.toml --jobs "$n" deploy >/dev/null 2>"$work/first.log" || { cat "$work/first.log"; exit 1; }
pipeline=$(dp --config deploy.toml --jobs "$n" deploy --print-pipeline)
for i in $(seq 1 "$runs"); do
    python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2))"
    # What the deploy would do (changes nothing), then the deploy itself.
    time_cmd dp --config deploy.toml --jobs "$n" deploy --plan >>"$work/t.plan"
    time_cmd dp --config deploy.toml --jobs "$n" deploy >>"$work/t.dp"
    python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2 + 1))"
    time_cmd bash -o pipefail -c "$pipeline" >>"$work/t.pipe"
done
if [ -n "${BASELINE:-}" ]; then
    for i in $(seq 1 "$runs"); do
        python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2 + 100))"
        time_cmd dp --config deploy.toml --jobs "$n" deploy >>"$work/t.new"
        python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2 + 101))"
        time_cmd "$BASELINE/dp" --config deploy.toml --jobs "$n" deploy >>"$work/t.base"
    done
fi
if [ -n "${ALIVE_OFF:-}" ]; then
    { echo 'server_alive_interval = "0s"'; cat deploy.toml; } >deploy-noalive.toml
    for i in $(seq 1 "$runs"); do
        python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2 + 200))"
        time_cmd dp --config deploy.toml --jobs "$n" deploy >>"$work/t.alive"
        python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed "$((i * 2 + 201))"
        time_cmd dp --config deploy-noalive.toml --jobs "$n" deploy >>"$work/t.noalive"
    done
fi
python3 "$OLDPWD/scripts/bench/gen-site.py" "$site" --change 1 --seed 999
echo "one more dp deploy, its progress:"
dp --config deploy.toml --jobs "$n" deploy 2>&1 >/dev/null | grep -v '^[a-z0-9]* *20[0-9]*T' | sed 's/^/  /'
dpt=$(median <"$work/t.dp") pt=$(median <"$work/t.pipe") plt=$(median <"$work/t.plan")
echo "redeploy with 1 changed file to $n hosts (batch 25%), median of $runs runs:"
printf '  dp deploy %.3f s (target < 3 s)   the five tools piped %.3f s   speed-up %sx (target >= 1.5)\n' \
    "$dpt" "$pt" "$(ratio "$pt" "$dpt")"
printf '  dp deploy --plan %.3f s (target < 0.5 s), %sx of the deploy\n' "$plt" "$(ratio "$plt" "$dpt")"
if [ -n "${BASELINE:-}" ]; then
    nt=$(median <"$work/t.new") bt=$(median <"$work/t.base")
    printf '  this build %.3f s   baseline %.3f s   ratio %sx (target <= 1.10)\n' "$nt" "$bt" "$(ratio "$nt" "$bt")"
fi
if [ -n "${ALIVE_OFF:-}" ]; then
    at=$(median <"$work/t.alive") ot=$(median <"$work/t.noalive")
    printf '  keepalives on %.3f s   off %.3f s   ratio %sx\n' "$at" "$ot" "$(ratio "$at" "$ot")"
fi
