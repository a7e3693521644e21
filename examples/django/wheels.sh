#!/bin/sh
# Usage: wheels.sh CACHE_DIR [PIP_DOWNLOAD_ARG]...
#
# Downloads the wheels of site/requirements.txt, with their dependencies, into CACHE_DIR,
# for the hosts' offline install (`pip_args = ["--no-index", "--find-links",
# "vendor/wheels"]` in deploy.toml). Copy or link CACHE_DIR to site/vendor/wheels before
# the deploy.
#
# It downloads only when CACHE_DIR does not hold them yet: CACHE_DIR/.requirements.sha256
# records what the last complete download was for (requirements.txt and the extra
# arguments), so a machine downloads once per change of requirements.txt.
#
# Extra arguments go to `pip download`, e.g. for hosts whose Python or platform differs
# from this machine's when a requirement has compiled wheels:
#   wheels.sh ~/.cache/mysite-wheels --python-version 3.11 --platform manylinux2014_x86_64
#
# PYTHON (default python3) runs pip. Of the PIP_* variables in the environment only
# those that say how to reach the index are kept (index URLs, certificates, proxy,
# timeouts); PIP_FIND_LINKS, PIP_NO_INDEX, PIP_REQUIRE_VIRTUALENV and the rest are
# dropped, so a local wheel directory or policy cannot change what gets downloaded.
set -eu

if [ "$#" -lt 1 ] || [ -z "$1" ]; then
    echo "usage: $0 CACHE_DIR [PIP_DOWNLOAD_ARG]..." >&2
    exit 2
fi
cache=$1
shift

here=$(cd "$(dirname "$0")" && pwd)
req="$here/site/requirements.txt"
python=${PYTHON:-python3}

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum | cut -d' ' -f1
    else
        shasum -a 256 | cut -d' ' -f1
    fi
}

# What the cache must have been made for: requirements.txt and the extra arguments.
want=$({ cat "$req"; printf '%s\n' "--" "$@"; } | sha256)
stamp="$cache/.requirements.sha256"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "wheels: $cache is up to date"
    exit 0
fi

for var in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    case $var in
        PIP_INDEX_URL | PIP_EXTRA_INDEX_URL | PIP_TRUSTED_HOST | PIP_CERT | PIP_CLIENT_CERT | \
            PIP_PROXY | PIP_DEFAULT_TIMEOUT | PIP_TIMEOUT | PIP_RETRIES) ;;
        *) unset "$var" ;;
    esac
done
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

mkdir -p "$cache"
rm -f "$stamp"
# Files already in the cache are reused by pip; the stamp is written only once the
# download is complete, so an interrupted run is simply run again.
"$python" -m pip download --only-binary=:all: -d "$cache" -r "$req" "$@"
printf '%s\n' "$want" >"$stamp"
echo "wheels: downloaded into $cache"
