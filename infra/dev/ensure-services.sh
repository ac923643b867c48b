#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on localhost; start them when installed but stopped,
# install them from Debian's packages when missing and we may (root with apt-get).
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $name did not come up" >&2
  return 1
}

pg_up() { pg_isready -q -h "$PGHOST" -p "$PGPORT"; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

install_if_missing() { # command, debian packages...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "ensure-services: $cmd is not installed; install $* or point VOICEFARM_* at a server" >&2
    return 1
  fi
}

install_if_missing pg_isready postgresql postgresql-client
if ! pg_up; then
  echo "ensure-services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for PostgreSQL pg_up
fi
# Trust auth for the postgres user on localhost is what this machine and CI use; say so if not.
psql -h "$PGHOST" -p "$PGPORT" -U postgres -Atc "select 1" >/dev/null 2>&1 || {
  echo "ensure-services: cannot log in as postgres on $PGHOST:$PGPORT (set VOICEFARM_TEST_PG)" >&2
}

install_if_missing redis-server redis-server
if ! redis_up; then
  echo "ensure-services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /tmp
  wait_for Redis redis_up
fi
echo "ensure-services: PostgreSQL and Redis answer"
