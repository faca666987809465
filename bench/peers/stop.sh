#!/usr/bin/env bash
# Stops the peers `start.sh` started and removes their data.
set -uo pipefail
PEERS_DIR="${PEERS_DIR:-/var/tmp/depot-peers}"
REDIS_ALWAYS_PORT="${REDIS_ALWAYS_PORT:-6390}"
REDIS_EVERYSEC_PORT="${REDIS_EVERYSEC_PORT:-6391}"
for port in "$REDIS_ALWAYS_PORT" "$REDIS_EVERYSEC_PORT"; do
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 && echo "redis on $port stopped"
done
pg_dir="$PEERS_DIR/pg"
if [ -f "$pg_dir/postmaster.pid" ]; then
  pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)
  runas=(); [ "$(id -u)" = 0 ] && runas=(runuser -u postgres --)
  "${runas[@]}" "$pg_ctl" -D "$pg_dir" -m fast -w stop >/dev/null && echo "postgresql stopped"
fi
rm -rf "$PEERS_DIR"
