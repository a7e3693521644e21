#!/bin/sh
# Installs what the tests need when it is missing (Debian/Ubuntu, apt-get), so that
# `make test` works on a fresh machine: OpenSSH server and client, the OpenSSL headers
# libssh2 builds against, Python (venv, pip) and Node.js (npm) for dependency tests,
# PostgreSQL for migration tests, and nginx for the zero-downtime test.
set -eu

need=""
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
command -v ssh >/dev/null 2>&1 || need="$need openssh-client"
[ -f /usr/include/openssl/ssl.h ] || need="$need libssl-dev"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v cc >/dev/null 2>&1 || need="$need gcc"
# dp-deps tests: a Python with venv and pip, and Node.js with npm.
command -v python3 >/dev/null 2>&1 || need="$need python3"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"
command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
# dp-sync tests: bzip2 on the hosts, for compressed uploads; curl, with which they fetch
# payloads from the artifact store.
command -v bzip2 >/dev/null 2>&1 || need="$need bzip2"
command -v curl >/dev/null 2>&1 || need="$need curl"
# dp-migrate tests: a PostgreSQL server (the tests run their own cluster with initdb).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need="$need postgresql"
fi
command -v psql >/dev/null 2>&1 || need="$need postgresql-client"
# Login shells the scripts must run under unchanged (quote::sh_command, the shell tests).
command -v zsh >/dev/null 2>&1 || need="$need zsh"
command -v fish >/dev/null 2>&1 || need="$need fish"
command -v bash >/dev/null 2>&1 || need="$need bash"
command -v dash >/dev/null 2>&1 || need="$need dash"
# The host-side scripts must pass shellcheck (POSIX sh mode).
command -v shellcheck >/dev/null 2>&1 || need="$need shellcheck"
# A host whose PATH puts BusyBox's applets first must be refused with a clear message.
command -v busybox >/dev/null 2>&1 || need="$need busybox"
# The https health check test makes its certificate with the openssl command.
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# dp-restart's zero-downtime test: a real nginx load balancer.
[ -x /usr/sbin/nginx ] || [ -x /usr/local/sbin/nginx ] || need="$need nginx-light"

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if [ -n "$need" ]; then
    echo "test-env: installing$need" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null 2>&1 ||
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends $need; }
fi

# sshd running as root wants its privilege-separation directory; PostgreSQL refuses to
# run as root, so the tests run it as `postgres`.
if [ "$(id -u)" = 0 ]; then
    mkdir -p /run/sshd
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /bin/sh postgres
    # Deploy users whose login shells differ: the same deploy must give the same result.
    for shell in bash dash zsh fish; do
        id "dp-$shell" >/dev/null 2>&1 ||
            useradd --create-home --shell "$(command -v "$shell")" "dp-$shell"
        # No password, but not locked: sshd (without PAM) refuses locked accounts.
        usermod -p '*' "dp-$shell"
    done
fi

# The artifact store tests: Garage, an S3-compatible server, built once per machine (about
# 11 minutes on 2 cores); a test service only, nothing of dp links it.
if ! command -v garage >/dev/null 2>&1 && ! [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
    echo "test-env: installing garage (cargo install, once per machine)" >&2
    cargo install --locked garage --version 2.5.0 --no-default-features \
        --features bundled-libs,sqlite --target-dir "${TMPDIR:-/tmp}/dp-garage-build" >&2
    rm -rf "${TMPDIR:-/tmp}/dp-garage-build"
fi

# The Django example's test installs Django and gunicorn offline, from wheels that this
# machine downloads once into a cache (again only when requirements.txt changes).
examples/django/wheels.sh "${DP_DJANGO_WHEELS:-$HOME/.cache/dp/django-wheels}" >&2
