#!/usr/bin/env bash
# A one-node Garage (an S3-compatible object store) on loopback, for the tests and the
# benchmarks: a test service only, nothing of dp links it (scripts/test-env.sh installs
# it when missing).
#
#   scripts/garage.sh start DIR   start it on free ports, its data in DIR, with a bucket
#                                 `dp-artifacts` and a key allowed on it; writes
#                                 DIR/endpoint (`http://127.0.0.1:PORT`) and DIR/key
#                                 (`KEY_ID SECRET`, mode 600) when it is ready
#   scripts/garage.sh stop DIR    stop it
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$dir" ] || { echo "usage: scripts/garage.sh start|stop DIR" >&2; exit 2; }
garage=$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# up PORT: waits (30 s at most) for something to listen on PORT.
up() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "garage did not start:" >&2
    cat "$dir/garage.log" >&2
    exit 1
}

case "$cmd" in
start)
    [ -x "$garage" ] || { echo "garage is not installed: run scripts/test-env.sh" >&2; exit 2; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    rm -f "$dir/endpoint" "$dir/key"
    rpc=$(free_port) s3=$(free_port)
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
# The store shares this machine with the client and every host: no zstd on its blocks.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$dir/garage.toml"
    g() { "$garage" -c "$dir/garage.toml" "$@"; }
    "$garage" -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
    echo $! >"$dir/garage.pid"
    up "$rpc"
    id=$(g node id -q)
    g layout assign -z dc1 -c 1G "${id%%@*}" >/dev/null
    g layout apply --version 1 >/dev/null
    created=$(g key create dp-key)
    key_id=$(sed -n 's/^Key ID: *//p' <<<"$created")
    secret=$(sed -n 's/^Secret key: *//p' <<<"$created")
    if [ -z "$key_id" ] || [ -z "$secret" ]; then echo "garage: no key in: $created" >&2; exit 1; fi
    g bucket create dp-artifacts >/dev/null
    g bucket allow --read --write --owner dp-artifacts --key dp-key >/dev/null
    up "$s3"
    (umask 077 && echo "$key_id $secret" >"$dir/key")
    echo "http://127.0.0.1:$s3" >"$dir/endpoint"
    ;;
stop)
    if [ -f "$dir/garage.pid" ]; then
        pid=$(cat "$dir/garage.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/garage.pid"
    fi
    ;;
*)
    echo "usage: scripts/garage.sh start|stop DIR" >&2
    exit 2
    ;;
esac
