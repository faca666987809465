#!/usr/bin/env bash
# Starts the peers of the comparison benchmark (`compare`) on loopback, from Debian's packages:
#
#   Redis 7   127.0.0.1:6390  --appendonly yes --appendfsync always
#   Redis 7   127.0.0.1:6391  --appendonly yes --appendfsync everysec
#   PostgreSQL 15  127.0.0.1:5439  a throwaway cluster (initdb), synchronous_commit on
#
# Everything lives under $PEERS_DIR (default /var/tmp/depot-peers: a real file system, so the
# fsyncs are real); `stop.sh` stops the servers and removes it. Installs redis-server and
# postgresql with apt-get when they are missing (needs root). Idempotent: a peer that already
# answers is left running.
#
# Usage: bench/peers/start.sh        then: cargo run --release -p depot-bench --bin compare
set -euo pipefail

PEERS_DIR="${PEERS_DIR:-/var/tmp/depot-peers}"
REDIS_ALWAYS_PORT="${REDIS_ALWAYS_PORT:-6390}"
REDIS_EVERYSEC_PORT="${REDIS_EVERYSEC_PORT:-6391}"
PG_PORT="${PG_PORT:-5439}"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
pg_bin=""
for v in 17 16 15; do
  if [ -x "/usr/lib/postgresql/$v/bin/initdb" ]; then pg_bin="/usr/lib/postgresql/$v/bin"; break; fi
done
[ -n "$pg_bin" ] || need_apt+=(postgresql)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The package starts a system-wide server on the default ports; the benchmark uses its own.
  systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true
fi
if [ -z "$pg_bin" ]; then
  for v in 17 16 15; do
    if [ -x "/usr/lib/postgresql/$v/bin/initdb" ]; then pg_bin="/usr/lib/postgresql/$v/bin"; break; fi
  done
fi
[ -n "$pg_bin" ] || { echo "no PostgreSQL binaries found" >&2; exit 1; }

mkdir -p "$PEERS_DIR"

start_redis() { # port fsync
  local port=$1 fsync=$2 dir="$PEERS_DIR/redis-$1"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "redis on $port already running"; return
  fi
  mkdir -p "$dir"
  # No automatic AOF rewrite: a background rewrite during a measurement would take a core;
  # the benchmark rewrites the AOF itself while it resets the data between runs.
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" \
    --appendonly yes --appendfsync "$fsync" --auto-aof-rewrite-percentage 0 \
    --protected-mode no
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/') on 127.0.0.1:$port (appendfsync $fsync)"
}
start_redis "$REDIS_ALWAYS_PORT" always
start_redis "$REDIS_EVERYSEC_PORT" everysec

pg_dir="$PEERS_DIR/pg"
if "$pg_bin/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q 2>/dev/null; then
  echo "postgresql on $PG_PORT already running"
else
  if [ ! -f "$pg_dir/PG_VERSION" ]; then
    mkdir -p "$pg_dir"
    chown postgres:postgres "$PEERS_DIR" "$pg_dir" 2>/dev/null || true
    runas=(); [ "$(id -u)" = 0 ] && runas=(runuser -u postgres --)
    "${runas[@]}" "$pg_bin/initdb" -D "$pg_dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  runas=(); [ "$(id -u)" = 0 ] && runas=(runuser -u postgres --)
  # Defaults otherwise (fsync on, synchronous_commit on, full_page_writes on); room for 64
  # clients and the benchmark's own connection.
  "${runas[@]}" "$pg_bin/pg_ctl" -D "$pg_dir" -l "$pg_dir/server.log" -w start -o \
    "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$pg_dir -c max_connections=120 -c synchronous_commit=on -c shared_buffers=256MB" >/dev/null
  echo "$("$pg_bin/postgres" --version) on 127.0.0.1:$PG_PORT (synchronous_commit on)"
fi
