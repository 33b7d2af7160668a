#!/usr/bin/env bash
# `make demo`: a walk through the offline keyring workflow, printed as it goes.
# Creates ./vault-data with a keyring per force of Keys.example, seals a sample CSV at source, decrypts it,
# rotates a master key, and shows what a tampered file and a wrong keyring do.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.build/release}"
vault="$bin/vault"
vaultd="$bin/vaultd"

# Development passphrases: override them in the environment for anything but a demo.
export VAULT_PASSPHRASE_WMP="${VAULT_PASSPHRASE_WMP:-dev-passphrase-wmp}"
export VAULT_PASSPHRASE_GMP="${VAULT_PASSPHRASE_GMP:-dev-passphrase-gmp}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

mkdir -p vault-data/keyrings vault-data/demo
chmod 700 vault-data
step "Keyrings for the forces in Keys.example (development passphrases from VAULT_PASSPHRASE_WMP / _GMP)"
echo "VAULT_PASSPHRASE_WMP=$VAULT_PASSPHRASE_WMP   VAULT_PASSPHRASE_GMP=$VAULT_PASSPHRASE_GMP   (development defaults)"
for force in wmp gmp; do
  keyring="vault-data/keyrings/$force.keyring"
  var="VAULT_PASSPHRASE_$(echo "$force" | tr a-z A-Z)"
  if [ -f "$keyring" ]; then
    echo "$keyring exists; keeping it"
  else
    VAULT_PASSPHRASE="${!var}" show "$vault" keyring init --force "$force" --out "$keyring"
  fi
done
show "$vaultd" custody check --custody Keys.example

step "A sample extract, sealed at source by West Midlands Police (the platform never sees the plaintext)"
cat > vault-data/demo/crime.csv <<'CSV'
crime_ref,offence,occurred,postcode_district,suspect_dob
WMP-2026-000101,burglary dwelling,2026-11-02,B15,1988-04-12
WMP-2026-000102,robbery personal,2026-11-03,B19,1999-09-30
WMP-2026-000103,modern slavery,2026-11-04,WV1,1975-01-17
CSV
export VAULT_PASSPHRASE="$VAULT_PASSPHRASE_WMP"
rm -f vault-data/demo/crime.csv.vault vault-data/demo/crime.decrypted.csv vault-data/demo/*.tampered.vault
show "$vault" encrypt --keyring vault-data/keyrings/wmp.keyring --dataset crime-records \
  --in vault-data/demo/crime.csv --out vault-data/demo/crime.csv.vault
echo "header line of the sealed file (DESIGN 5.4):"
head -1 vault-data/demo/crime.csv.vault

step "Decrypt it offline with the force's keyring alone"
show "$vault" decrypt --keyring vault-data/keyrings/wmp.keyring --in vault-data/demo/crime.csv.vault \
  --out vault-data/demo/crime.decrypted.csv
cmp vault-data/demo/crime.csv vault-data/demo/crime.decrypted.csv && echo "identical to the original"

step "Rotate the master key: new files use v+1, old files still open"
show "$vault" keyring rotate --keyring vault-data/keyrings/wmp.keyring
show "$vault" keyring show --keyring vault-data/keyrings/wmp.keyring

step "A tampered file and the wrong force's keyring are refused, and no output is written"
cp vault-data/demo/crime.csv.vault vault-data/demo/crime.tampered.vault
printf 'X' | dd of=vault-data/demo/crime.tampered.vault bs=1 seek=$(( $(stat -c %s vault-data/demo/crime.csv.vault) - 20 )) \
  conv=notrunc status=none
set +e
show "$vault" decrypt --keyring vault-data/keyrings/wmp.keyring --in vault-data/demo/crime.tampered.vault \
  --out vault-data/demo/should-not-exist.csv
echo "exit code $? (3 = integrity)"
VAULT_PASSPHRASE="$VAULT_PASSPHRASE_GMP" show "$vault" decrypt --keyring vault-data/keyrings/gmp.keyring \
  --in vault-data/demo/crime.csv.vault --out vault-data/demo/should-not-exist.csv
echo "exit code $? (4 = wrong force)"
set -e
test ! -e vault-data/demo/should-not-exist.csv && echo "no output file was created"

step "Next"
echo "vault --help                 every command, passphrase sources and exit codes"
echo "vault bench crypto           Cobblestone-256 vs openssl speed, keyring unwrap latency"
echo "make test                    the whole test suite"
