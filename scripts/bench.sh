#!/usr/bin/env bash
# `make bench-report`: every bench in one run, on a release build, with PostgreSQL and SeaweedFS (S3) started on
# loopback as `make test` starts them, and stopped at the end. Writes DIR/bench.json, DIR/bench.md and DIR/bench.svg
# (vault bench all --report). The scratch database and bucket live in a temporary directory removed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
report="$(realpath -m "${1:-bench-report}")"
python="${2:-python3}"

swift build -c release || exit 1
work=$(mktemp -d /tmp/vault-bench.XXXXXX)
trap 'scripts/test-services.sh stop "$work" "$python"; rm -rf "$work"' EXIT
scripts/test-services.sh start "$work" "$python" || { echo "could not start PostgreSQL and SeaweedFS"; exit 1; }
# shellcheck disable=SC1091
source "$work/services.env"
# The bucket, with curl's SigV4; the credentials go through a private configuration file, never the command line.
printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:us-east-1:s3"\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" \
  > "$work/curl-s3.conf"
chmod 600 "$work/curl-s3.conf"
curl -s -f -K "$work/curl-s3.conf" -X PUT "$VAULT_TEST_S3_ENDPOINT/vault-bench" -o /dev/null \
  || { echo "could not create the bench bucket"; exit 1; }
rm -f "$work/curl-s3.conf"
mkdir -p "$work/scratch"
.build/release/vault bench all --report "$report" --work-dir "$work/scratch" \
  --catalog "$VAULT_TEST_POSTGRES_URL" --blobs s3://vault-bench/run --s3-endpoint "$VAULT_TEST_S3_ENDPOINT" "${@:3}"
