#!/usr/bin/env bash
# Builds and runs every test, then prints one plain summary line ("N passed, M failed").
# No external services are needed yet: the tests use the real binaries, files and an independent Python reader.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"

swift build --build-tests || exit 1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
VAULT_PYTHON="$python" swift test --skip-build 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Swift Testing closes with "Test run with N tests in M suites passed|failed ... [with K issues]".
total=$(grep -Eo 'Test run with [0-9]+ tests?' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -Ec '^✘ Test .* failed' "$log" || true)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$total" -eq 0 ]; then
  echo "no tests ran"
  exit 1
fi
echo "tests: $((total - failed)) passed, $failed failed"
exit "$status"
