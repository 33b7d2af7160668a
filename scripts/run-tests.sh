#!/usr/bin/env bash
# Builds and runs the suite once. Tests that depend on a backend take the combinations present as arguments
# (Tests/VaultTestSupport/TestBackend.swift): keyring and PKCS#11 (SoftHSM2) custody on the embedded default (SQLite +
# files), keyring custody on PostgreSQL + S3 (SeaweedFS); the others run once. Then a plain summary. PostgreSQL and
# SeaweedFS run on loopback (scripts/test-services.sh) and stop at the end. SoftHSM2 gets a throwaway token directory
# and SOFTHSM2_CONF under a temporary directory, and one token initialised with softhsm2-util (PINs typed on a pseudo-terminal, never as arguments);
# the tests create further tokens of their own there. Everything is removed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"

swift build --build-tests || exit 1

# The test servers' start itself: a few starts in a row, and a start that loses a port to another program.
scripts/check-test-services.sh 2 "$python" || { echo "the test services do not start reliably"; exit 1; }

work=$(mktemp -d /tmp/vault-tests.XXXXXX)
trap 'scripts/test-services.sh stop "$work" "$python"; rm -rf "$work"' EXIT
# PostgreSQL and SeaweedFS (S3) on loopback for the scale-out pass and the multi-instance and cluster tests.
scripts/test-services.sh start "$work" "$python" || { echo "could not start PostgreSQL and SeaweedFS"; exit 1; }
# shellcheck disable=SC1091
source "$work/services.env"
mkdir -p "$work/tokens"
cat > "$work/softhsm2.conf" <<CONF
directories.tokendir = $work/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$work/softhsm2.conf"
export VAULT_TEST_CI_TOKEN="vault-ci"
so_pin="so-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
PTY_ANSWERS="$so_pin"$'\n'"$so_pin"$'\n'"vault-test-user-pin"$'\n'"vault-test-user-pin" \
  "$python" Tests/interop/pty_run.py "$(command -v softhsm2-util)" --init-token --free --label "$VAULT_TEST_CI_TOKEN" \
  > "$work/init-token.log" 2>&1
if ! grep -q "exit=0" "$work/init-token.log"; then
  echo "softhsm2-util could not initialise the test token:"; cat "$work/init-token.log"; exit 1
fi

log="$work/tests.log"
# One run: each backend-dependent test takes the backends present as arguments (Tests/VaultTestSupport/TestBackend.swift).
VAULT_PYTHON="$python" swift test --skip-build 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Swift Testing closes with "Test run with N tests in M suites passed|failed ... [with K issues]"; a parameterised
# test counts once there, and each of its cases (one per backend) is a line "Test ... with N test cases passed".
ran=$(grep -Eo 'Test run with [0-9]+ tests?' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
bad=$(grep -E '^✘ Test .* failed after' "$log" | grep -vc '^✘ Test run with' || true)
if [ "$status" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
skipped=$(grep -c '^➜ Test .* skipped' "$log" || true)
cases=$(grep -Eo 'with [0-9]+ test cases? (passed|failed)' "$log" | awk '{n += $2} END {print n + 0}')
overall=0
if [ "$ran" -eq 0 ] || [ "$ran" -le "$skipped" ]; then echo "no tests ran"; overall=1; fi
[ "$status" -ne 0 ] && overall=1
# Then each libFuzzer target of Fuzz/VaultFuzz for a bounded time (scripts/fuzz.sh; VAULT_TEST_FUZZ_SECONDS, 0 skips
# it knowingly): a crash, trap, leak or hang in a parser fails the run, with its reproducer named above the summary.
fuzz_seconds="${VAULT_TEST_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" -gt 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds" || overall=1
else
  echo "fuzz: skipped (VAULT_TEST_FUZZ_SECONDS=0)"
fi
if [ "$bad" -gt 0 ]; then
  echo "failures:"
  grep -E '^✘ Test .*(failed after|recorded an issue)' "$log" | grep -v '^✘ Test run with' | cut -c1-400 | sed 's/^/  /'
fi
echo "tests: $((ran - bad - skipped)) passed, $skipped skipped, $bad failed; $cases cases of parameterised tests" \
  "(keyring and PKCS#11 custody; SQLite+files and PostgreSQL+S3)"
exit "$overall"
