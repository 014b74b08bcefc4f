#!/usr/bin/env bash
# A Docker Engine for the container stack on a Debian/Ubuntu machine with no engine of its own:
# installs Debian's docker.io, docker-compose and debootstrap when missing (as root), then starts a
# dockerd with its own socket and a stable data root (layers stay cached between runs) unless one
# already answers there. Idempotent and quiet; prints the DOCKER_HOST to use.
#   docker/engine.sh start   install if needed, start if needed, print DOCKER_HOST=...
#   docker/engine.sh base    also make the Debian base image mlplat-base:bookworm (debootstrap), once
#   docker/engine.sh stop    stop the dockerd this script started (its data root stays)
set -euo pipefail
SOCK=${MLPLAT_DOCKER_SOCK:-/run/mlplat-docker.sock}
DATA=${MLPLAT_DOCKER_DATA:-/var/lib/mlplat-docker}
PIDFILE=/run/mlplat-docker.pid
export DOCKER_HOST=unix://$SOCK

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install ${missing[*]} (Debian packages) as root first" >&2; exit 1
  fi
  # Debian's own mechanism keeps the packages' system services from starting; an existing policy stays
  local policy=/usr/sbin/policy-rc.d own=
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy && own=1; fi
  local status=0 log; log=$(mktemp)
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" iptables; } >"$log" 2>&1 || status=$?
  [ -n "$own" ] && rm -f $policy
  [ $status = 0 ] || tail -20 "$log" >&2  # quiet unless it failed
  rm -f "$log"
  return $status
}

start() {
  install
  if ! answers; then
    [ "$(id -u)" = 0 ] || { echo "starting dockerd needs root" >&2; exit 1; }
    mkdir -p "$DATA" /run/mlplat-docker-exec
    nohup dockerd --host "$DOCKER_HOST" --data-root "$DATA" --exec-root /run/mlplat-docker-exec \
      --pidfile $PIDFILE >/var/log/mlplat-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 60); do answers && break; sleep 0.5; done
    answers || { echo "dockerd did not answer; see /var/log/mlplat-dockerd.log" >&2; exit 1; }
  fi
  echo "DOCKER_HOST=$DOCKER_HOST"
}

# A Debian bookworm base image from Debian's packages, for machines without an image registry; its
# python3 is 3.11, at /usr/bin (the official python images have theirs at /usr/local/bin).
base() {
  start >/dev/null
  if docker image inspect mlplat-base:bookworm >/dev/null 2>&1; then echo "DOCKER_HOST=$DOCKER_HOST"; return 0; fi
  local root; root=$(mktemp -d /tmp/mlplat-rootfs.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,wget \
    bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | docker import - mlplat-base:bookworm >/dev/null
  rm -rf "$root"
  echo "DOCKER_HOST=$DOCKER_HOST"
}

stop() {
  [ -f $PIDFILE ] || return 0
  local pid; pid=$(cat $PIDFILE)
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
}

case "${1:-start}" in
  start) start ;;
  base) base ;;
  stop) stop ;;
  *) echo "usage: $0 start|base|stop" >&2; exit 2 ;;
esac
