#!/usr/bin/env bash
# `make demo`: deploy the bundled example site (examples/demo) to three local hosts under
# target/demo with a SQLite database, then show where it answers. Run it again to deploy
# a second release incrementally. `make demo-stop` stops the demo servers.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=examples/demo
# The demo's hosts run the site with a Python virtualenv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    else
        echo "demo: needs python3 with venv (apt-get install python3-venv)" >&2
        exit 2
    fi
fi
mkdir -p target/demo
# The site's one dependency, as a local wheel: installs offline.
python3 tests/fixtures/make_wheel.py "$demo/site/vendor/wheels" demo_greeting 1.0 >/dev/null
export DATABASE_URL="sqlite://$PWD/target/demo/demo.sqlite3"
unset PIP_FIND_LINKS
target/release/dp --config "$demo/deploy.toml" deploy >target/demo/last-deploy.jsonl
echo
for port in 18101 18102 18103; do
    page=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().splitlines()[0])" "http://127.0.0.1:$port/")
    echo "http://127.0.0.1:$port/  ->  $page"
done
echo
echo "Records of this deploy: target/demo/last-deploy.jsonl. Deploy again: make demo. Stop: make demo-stop."
