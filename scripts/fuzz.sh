#!/usr/bin/env bash
# scripts/fuzz.sh SECONDS [TARGET...]: runs each libFuzzer target of Fuzz/VaultFuzz (every parser that meets outside
# bytes) for SECONDS, and exits non-zero when any of them crashed, trapped, leaked or hung.
#
# Builds the fuzz binary in .build-fuzz (VAULT_FUZZ=1 adds the VaultFuzz target to Package.swift and instruments the
# KeyCustody and Vault modules with -sanitize=fuzzer,address; the normal build never sees it). Seeds come from the
# vault's own code (VAULT_FUZZ_SEEDS mode of the binary), the C2SP chunked-encryption vectors ($VAULT_VECTORS, else
# ../shared/vectors) and Fuzz/corpus/<target>/. Working corpora live in a temporary directory, never in the checkout;
# reproducers are kept in $FUZZ_FINDINGS (default /tmp/vault-fuzz-findings). FUZZ_JOBS targets run at once (default:
# the number of cores, at most 4), each under `nice -n 19` so builds and tests keep priority.
#
# Exit status: 0 when every target ran clean, 1 on a finding, 2 when the fuzz binary cannot be built or seeded.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds="${1:-60}"
shift || true
scratch=.build-fuzz
binary="$scratch/debug/VaultFuzz"
findings="${FUZZ_FINDINGS:-/tmp/vault-fuzz-findings}"
jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}"
[ "$jobs" -gt 4 ] && jobs=4
[ "$jobs" -lt 1 ] && jobs=1

work=$(mktemp -d /tmp/vault-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp" "$work/seeds" "$work/corpus" "$work/logs" "$work/artifacts"

started=$(date +%s)
echo "fuzz: building VaultFuzz in $scratch (VAULT_FUZZ=1, nice -n 19)"
if ! VAULT_FUZZ=1 nice -n 19 swift build --scratch-path "$scratch" --product VaultFuzz > "$work/build.log" 2>&1; then
  grep -v 'Cannot export local symbol' "$work/build.log" | tail -40
  echo "fuzz: the fuzz binary does not build"
  exit 2
fi
built=$(date +%s)

# Swift's own crash backtracer reads the stack in a way AddressSanitizer reports as an overflow; libFuzzer and the
# sanitizers print the report instead.
export SWIFT_BACKTRACE=enable=no
# Scratch files of the targets (a sealed file, an audit export read from disk) go to the temporary directory.
export TMPDIR="$work/tmp"
# Leaks of TOMLKit's C++ bridge are known and listed, with their cause, in Fuzz/lsan.supp; any other is a finding.
export LSAN_OPTIONS="suppressions=$root/Fuzz/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="detect_leaks=1"

if ! VAULT_FUZZ_SEEDS="$work/seeds" "$binary" > "$work/seeds.log" 2>&1; then
  tail -20 "$work/seeds.log"
  echo "fuzz: the seed corpora could not be made"
  exit 2
fi
# The C2SP Cobblestone vectors as raw-mode inputs of the cobblestone target (layout: Fuzz/VaultFuzz/Seeds.swift).
vectors="${VAULT_VECTORS:-$root/../shared/vectors}"
c2sp="$vectors/wycheproof/c2sp_chunked_encryption_aes_256_gcm_test.json"
if [ -f "$c2sp" ] && command -v python3 >/dev/null; then
  python3 - "$c2sp" "$work/seeds/cobblestone" <<'PY'
import json, struct, sys, zlib
vectors, out = sys.argv[1], sys.argv[2]
for group in json.load(open(vectors))["testGroups"]:
    for test in group["tests"]:
        key, ctx = bytes.fromhex(test["key"]), bytes.fromhex(test["ctx"])
        ct = zlib.decompress(bytes.fromhex(test["ct"]))
        if len(ctx) > 96 or len(ct) > 80000:
            continue
        mode = b"\x00" + key if len(key) == 32 else b"\x0e" + bytes([min(len(key), 40)]) + key
        seed = mode + bytes([len(ctx)]) + ctx + struct.pack(">Q", int(test["tcId"])) + ct
        open(f"{out}/c2sp-{test['tcId']}", "wb").write(seed)
PY
else
  echo "fuzz: no C2SP vectors at $c2sp (set VAULT_VECTORS); the cobblestone target starts from the vault's own seeds"
fi
for directory in Fuzz/corpus/*/; do
  [ -d "$directory" ] || continue
  target=$(basename "$directory")
  mkdir -p "$work/seeds/$target"
  cp "$directory"* "$work/seeds/$target/" 2>/dev/null || true
done

all=$(VAULT_FUZZ_TARGET=list "$binary")
if [ "$#" -gt 0 ]; then selected=("$@"); else mapfile -t selected < <(cut -f1 <<< "$all"); fi

# A target whose every input leaks by a known cause (leak checking "replay" in the list) fuzzes without libFuzzer's
# per-input leak check, which would scan the heap after every input; LeakSanitizer still checks at exit, and then
# every input of the corpus it built is replayed with the per-input check.
run_target() {
  local target=$1 max_len=$2 leaks=$3 dictionary=$4 rc
  local options=()
  [ "$dictionary" != - ] && options+=(-dict="$root/Fuzz/dictionaries/$dictionary")
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target" "$work/seeds/$target"
  VAULT_FUZZ_TARGET="$target" nice -n 19 "$binary" "${options[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -detect_leaks="$([ "$leaks" = replay ] && echo 0 || echo 1)" \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/$target/" \
    "$work/corpus/$target" "$work/seeds/$target" > "$work/logs/$target.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ] && [ "$leaks" = replay ]; then
    VAULT_FUZZ_TARGET="$target" nice -n 19 "$binary" -runs=0 -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
      -detect_leaks=1 -artifact_prefix="$work/artifacts/$target/" "$work/corpus/$target" \
      > "$work/logs/$target.replay.log" 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && cat "$work/logs/$target.replay.log" >> "$work/logs/$target.log"
  fi
  echo "$rc" > "$work/logs/$target.rc"
}

echo "fuzz: ${#selected[@]} targets, ${seconds} s each, $jobs at a time"
running=0
for target in "${selected[@]}"; do
  max_len=$(awk -F'\t' -v t="$target" '$1 == t { print $2 }' <<< "$all")
  leaks=$(awk -F'\t' -v t="$target" '$1 == t { print $3 }' <<< "$all")
  dictionary=$(awk -F'\t' -v t="$target" '$1 == t { print $4 }' <<< "$all")
  if [ -z "$max_len" ]; then echo "fuzz: no target $target (targets: $(cut -f1 <<< "$all" | tr '\n' ' '))"; exit 2; fi
  run_target "$target" "$max_len" "$leaks" "$dictionary" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

final_stat() { grep -m1 "^stat::$2:" "$work/logs/$1.log" | awk '{ print $2 }'; }
failed=0
printf '%-24s %11s %8s %7s %7s %13s  %s\n' target executions execs/s cov ft "corpus (new)" result
for target in "${selected[@]}"; do
  log="$work/logs/$target.log"
  rc=$(cat "$work/logs/$target.rc" 2>/dev/null || echo 1)
  status=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' <<< "$status" | awk '{ print $2 }')
  ft=$(grep -Eo 'ft: [0-9]+' <<< "$status" | awk '{ print $2 }')
  corpus=$(grep -Eo 'corp: [0-9]+' <<< "$status" | awk '{ print $2 }')
  artifacts=$(find "$work/artifacts/$target" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \
    -o -name 'oom-*' \) 2>/dev/null)
  result=ok
  if [ -n "$artifacts" ] || [ "$rc" -ne 0 ]; then
    result="FINDING (exit $rc)"
    failed=1
  fi
  printf '%-24s %11s %8s %7s %7s %13s  %s\n' "$target" "$(final_stat "$target" number_of_executed_units)" \
    "$(final_stat "$target" average_exec_per_sec)" "${cov:--}" "${ft:--}" \
    "${corpus:--} (+$(final_stat "$target" new_units_added))" \
    "$result"
  if [ "$result" != ok ]; then
    mkdir -p "$findings/$target"
    cp "$log" "$findings/$target/fuzz.log"
    for artifact in $artifacts; do
      cp "$artifact" "$findings/$target/"
      echo "    reproducer: $findings/$target/$(basename "$artifact")"
      echo "    reproduce:  VAULT_FUZZ_TARGET=$target SWIFT_BACKTRACE=enable=no" \
        "LSAN_OPTIONS=suppressions=$root/Fuzz/lsan.supp $binary $findings/$target/$(basename "$artifact")"
    done
    echo "    log:        $findings/$target/fuzz.log"
    grep -v '^    #[0-9]*[[:space:]]*0x[0-9a-f]* in fuzzer::' "$log" \
      | grep -m1 -A14 -E 'VaultFuzz invariant|Fatal error|ERROR: (Address|Leak)Sanitizer|ERROR: libFuzzer|Assertion' \
      | sed 's/^/    | /'
  fi
done
echo "fuzz: $((${#selected[@]})) targets in $(( $(date +%s) - started )) s (build $((built - started)) s);" \
  "$([ "$failed" -eq 0 ] && echo 'no findings' || echo "findings kept in $findings")"
exit "$failed"
