#!/usr/bin/env bash
# A fleet of real OpenSSH sshd hosts on loopback, for benchmarks and manual trials.
#
#   scripts/fleet.sh start N DIR   start N sshd on free ports; writes into DIR:
#                                  deploy.toml (stage "bench"), known_hosts, client key,
#                                  ssh_config (Host h1..hN for the OpenSSH client), hosts.txt
#   scripts/fleet.sh stop DIR      stop them
#
# Deploy roots are DIR/hN/root. With FLEET_SSHDS=M (fewer than N), M sshd processes serve
# the N hosts (host i is served by the sshd of h((i-1)%M+1), so several hosts share a port
# and a host key; each host still gets its own session and root). Logins are as
# $FLEET_USER (default: the current user); when run as root with FLEET_USER set to a user that does not exist, that user is created
# with /bin/sh as its shell (a deploy account without a heavy shell rc).
set -euo pipefail

cmd=${1:-}; shift || true
case "$cmd" in
start)
    n=$1 dir=$2
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    sshd=$(command -v sshd || echo /usr/sbin/sshd)
    [ "$(id -u)" = 0 ] && mkdir -p /run/sshd
    user=${FLEET_USER:-$(id -un)}
    if ! id "$user" >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || { echo "fleet: no user $user" >&2; exit 2; }
        useradd --system --create-home --home-dir "/var/lib/$user" --shell /bin/sh "$user"
    fi
    # A home that exists, or sshd prints "Could not chdir to home directory" at each login.
    home=$(getent passwd "$user" | cut -d: -f6)
    if [ ! -d "$home" ] && [ "$(id -u)" = 0 ]; then
        mkdir -p "/var/lib/$user" && chown "$user" "/var/lib/$user" &&
            usermod -d "/var/lib/$user" "$user" || echo "fleet: could not give $user a home" >&2
    fi
    # No password, but not locked: sshd refuses locked accounts.
    [ "$user" = "$(id -un)" ] || [ "$(id -u)" != 0 ] || usermod -p '*' "$user"
    # sshd reads authorized_keys as the login user: it must reach the fleet directory.
    [ "$user" = "$(id -un)" ] || chmod a+x "$dir" "$(dirname "$dir")"
    ssh-keygen -q -t ed25519 -N '' -C dp-bench -f "$dir/client_ed25519" <<<y >/dev/null 2>&1 || true
    : >"$dir/known_hosts"; : >"$dir/ssh_config"; : >"$dir/hosts.txt"
    hosts_toml=""
    sshds=${FLEET_SSHDS:-$n}
    [ "$sshds" -ge 1 ] && [ "$sshds" -le "$n" ] || sshds=$n
    declare -a ports
    for i in $(seq 1 "$n"); do
        h="$dir/h$i"; mkdir -p "$h/root"
        [ "$user" = "$(id -un)" ] || chown "$user" "$h/root"
        if [ "$i" -le "$sshds" ]; then
            [ -f "$h/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "h$i" -f "$h/host_ed25519"
            cp "$dir/client_ed25519.pub" "$h/authorized_keys"
            port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
            ports[i]=$port
            cat >"$h/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $h/host_ed25519
PidFile $h/sshd.pid
AuthorizedKeysFile $h/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
PrintMotd no
MaxStartups $((n > 200 ? n + 50 : 200))
MaxSessions 100
CFG
            "$sshd" -f "$h/sshd_config" -E "$h/sshd.log"
            echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$h/host_ed25519.pub")" >>"$dir/known_hosts"
        fi
        port=${ports[$(( (i - 1) % sshds + 1 ))]}
        cat >>"$dir/ssh_config" <<CFG
Host h$i
  HostName 127.0.0.1
  Port $port
  User $user
  IdentityFile $dir/client_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
CFG
        echo "h$i $port" >>"$dir/hosts.txt"
        hosts_toml+="  { name = \"h$i\", addr = \"127.0.0.1\", port = $port, root = \"$h/root\" },"$'\n'
    done
    cat >"$dir/deploy.toml" <<TOML
app = "bench"
known_hosts = "$dir/known_hosts"
identity = "$dir/client_ed25519"

[stages.bench]
user = "$user"
roles = ["web"]
hosts = [
$hosts_toml]
TOML
    # Wait until every sshd answers.
    sort -u -k2,2 "$dir/hosts.txt" | while read -r _ port; do
        for _ in $(seq 1 200); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.02
        done
    done
    ;;
stop)
    dir=$1
    for pidfile in "$dir"/h*/sshd.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: $0 start N DIR | stop DIR" >&2
    exit 2
    ;;
esac
