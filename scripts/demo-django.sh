#!/usr/bin/env bash
# `make demo-django`: deploy the Django example (examples/django: Django 5.2 LTS,
# gunicorn, collectstatic as the build step, manage.py migrate) to two local hosts under
# target/django with SQLite, then show where it answers. Run it again for a second
# release. `make demo-django-stop` stops the gunicorn masters.
set -euo pipefail
cd "$(dirname "$0")/.."
ex=examples/django
# Django and gunicorn as wheels, downloaded once into a cache; the hosts install offline.
wheels=${DP_DJANGO_WHEELS:-$HOME/.cache/dp/django-wheels}
"$ex/wheels.sh" "$wheels" >&2
rm -rf "$ex/site/vendor/wheels"
mkdir -p "$ex/site/vendor"
cp -r "$wheels" "$ex/site/vendor/wheels"
db="$PWD/target/django/db.sqlite3"
# Each host's settings live in <root>/shared/.env, made once.
for h in web1 web2; do
    shared=target/django/hosts/$h/shared
    mkdir -p "$shared"
    [ -f "$shared/.env" ] || printf 'SECRET_KEY=%s\nDATABASE_URL=sqlite:///%s\n' \
        "$(python3 -c 'import secrets; print(secrets.token_urlsafe(40))')" "$db" >"$shared/.env"
done
export DATABASE_URL="sqlite:///$db"
target/release/dp --config "$ex/deploy.toml" deploy >target/django/last-deploy.jsonl
echo
for port in 18201 18202; do
    echo "http://127.0.0.1:$port/  ->  $(python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "http://127.0.0.1:$port/healthz")"
done
echo
echo "Records: target/django/last-deploy.jsonl. Deploy again: make demo-django. Stop: make demo-django-stop."
