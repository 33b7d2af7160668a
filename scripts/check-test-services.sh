#!/usr/bin/env bash
# Starts and stops the test servers (scripts/test-services.sh) N times in a row and checks each start: PostgreSQL
# answers a query, SeaweedFS's S3 answers, every port is different, and nothing is left listening after the stop.
# Then one start where PostgreSQL and one where SeaweedFS is handed a port another program holds: the script must
# start it again on new ports. Usage: check-test-services.sh N PYTHON
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-50}"; python="${2:-python3}"
case "$python" in /*) ;; */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;; esac

# The ports the given processes listen on, one a line.
listening() {
  local pid pattern=""
  for pid in "$@"; do pattern="$pattern${pattern:+|}pid=$pid,"; done
  [ -n "$pattern" ] || return 0
  ss -Hltnp 2>/dev/null | grep -E "$pattern" | awk '{print $4}' | sed 's/.*://' | sort -n
}

# One start, the checks, and the stop; $1 names the attempt in messages.
one_run() {
  local name="$1" dir
  dir=$(mktemp -d /tmp/vault-services-check.XXXXXX)
  if ! "$here/test-services.sh" start "$dir" "$python" > "$dir/start.log" 2>&1; then
    echo "$name: the services did not start:"; cat "$dir/start.log"
    "$here/test-services.sh" stop "$dir" "$python" || true
    return 1
  fi
  # shellcheck disable=SC1091
  source "$dir/services.env"
  local ok=0
  "$VAULT_TEST_PG_BIN/psql" -X -q -A -t -d "$VAULT_TEST_POSTGRES_URL" -c "SELECT 1" | grep -qx 1 \
    || { echo "$name: PostgreSQL does not answer"; ok=1; }
  local code; code=$(curl -s -o /dev/null -w '%{http_code}' "$VAULT_TEST_S3_ENDPOINT/" || true)
  [ "$code" = "403" ] || [ "$code" = "200" ] || { echo "$name: S3 answered $code"; ok=1; }
  local pids ports
  pids="$(cat "$dir/seaweedfs/pid") $(head -1 "$dir/pg/data/postmaster.pid")"
  # SeaweedFS's servers come up one after another: wait (up to 10 s) for all nine listeners.
  for _ in $(seq 1 50); do
    # shellcheck disable=SC2086
    ports=$(listening $pids)
    [ "$(echo "$ports" | wc -l)" -ge 9 ] && break
    sleep 0.2
  done
  [ "$(echo "$ports" | wc -l)" -ge 9 ] || { echo "$name: expected 9 listening ports, saw: $ports"; ok=1; }
  [ "$(echo "$ports" | wc -l)" -eq "$(echo "$ports" | sort -u | wc -l)" ] || { echo "$name: a port twice"; ok=1; }
  grep -q "new ports" "$dir/start.log" && cat "$dir/start.log"
  "$here/test-services.sh" stop "$dir" "$python"
  # shellcheck disable=SC2086
  [ -z "$(listening $pids)" ] || { echo "$name: still listening after stop: $(listening $pids | tr '\n' ' ')"; ok=1; }
  rm -rf "$dir"
  return "$ok"
}

for i in $(seq 1 "$runs"); do
  one_run "start $i" || { echo "failed at start $i of $runs"; exit 1; }
done
echo "$runs consecutive starts succeeded"

# A port another program holds: a listener of our own on the first port PostgreSQL (asks for 1) or SeaweedFS (asks
# for 8) is handed; the start must notice and start that server again on new ports.
for wanted in 1 8; do
  holder_port=$("$python" "$here/free_ports.py" 1)
  "$python" -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$holder_port)); s.listen(); time.sleep(300)" &
  holder=$!
  sleep 0.3
  export FREE_PORTS_TAKEN_ONCE; FREE_PORTS_TAKEN_ONCE=$(mktemp /tmp/vault-taken-port.XXXXXX)
  echo "$wanted $holder_port" > "$FREE_PORTS_TAKEN_ONCE"
  log=$(mktemp /tmp/vault-services-check.XXXXXX)
  one_run "start with port $holder_port taken" > "$log" 2>&1 || { cat "$log"; kill "$holder"; exit 1; }
  kill "$holder" 2>/dev/null || true
  [ ! -e "$FREE_PORTS_TAKEN_ONCE" ] || { echo "the taken port $holder_port was never handed out"; exit 1; }
  grep -q "starting again on new ports" "$log" || { echo "no retry after port $holder_port was taken:"; cat "$log"; exit 1; }
  echo "$(grep -m1 "starting again" "$log")"
  rm -f "$log"
  unset FREE_PORTS_TAKEN_ONCE
done
echo "a start that lost its port to another program was started again on new ports (PostgreSQL and SeaweedFS)"
