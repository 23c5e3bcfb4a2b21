#!/usr/bin/env bash
# Start PostgreSQL, Redis and RabbitMQ on loopback when they are installed but stopped; install them
# first (Debian packages) when they are missing and we are root, with the pgvector extension chat needs.
# Then wait until each one answers.
set -euo pipefail

say() { printf '\033[1m[services]\033[0m %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local name=$1 port=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do port_open "$port" && return 0; sleep 0.5; done
  say "$name did not open port $port"; return 1
}

missing=()
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}: install them (Debian: apt-get install ${missing[*]})"; exit 1
  fi
fi

if ! port_open 5432; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
fi
if ! port_open 6379; then
  say "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! port_open 5672; then
  say "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi
wait_port PostgreSQL 5432
bash "$(dirname "$0")/install_pgvector.sh"
wait_port Redis 6379
wait_port RabbitMQ 5672 240
rabbitmqctl -q await_startup >/dev/null 2>&1 || true
say "PostgreSQL, Redis and RabbitMQ are up on 127.0.0.1"
