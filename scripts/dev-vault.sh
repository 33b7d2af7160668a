#!/usr/bin/env bash
# `make run`: vaultd on the embedded default (keyring custody, SQLite, files in ./vault-data, self-signed TLS),
# set up from nothing on first run and reused afterwards. Prints how to use it, then serves until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.build/release}"
vault="$bin/vault"
vaultd="$bin/vaultd"
port="${VAULT_PORT:-8443}"
data=vault-data

# Development passphrases for the keyrings of Keys.example; set them yourself for anything but a trial.
if [ -z "${VAULT_PASSPHRASE_WMP:-}" ] || [ -z "${VAULT_PASSPHRASE_GMP:-}" ]; then
  echo "development passphrases: VAULT_PASSPHRASE_WMP=dev-passphrase-wmp VAULT_PASSPHRASE_GMP=dev-passphrase-gmp" \
       "(set your own to override)"
fi
export VAULT_PASSPHRASE_WMP="${VAULT_PASSPHRASE_WMP:-dev-passphrase-wmp}"
export VAULT_PASSPHRASE_GMP="${VAULT_PASSPHRASE_GMP:-dev-passphrase-gmp}"

mkdir -p "$data/keyrings" "$data/tls" "$data/tokens" "$data/demo"
chmod 700 "$data" "$data/tokens"

for force in wmp gmp; do
  var="VAULT_PASSPHRASE_$(echo "$force" | tr a-z A-Z)"
  if [ ! -f "$data/keyrings/$force.keyring" ]; then
    VAULT_PASSPHRASE="${!var}" "$vault" keyring init --force "$force" --out "$data/keyrings/$force.keyring" >/dev/null
    echo "created keyring for $force (passphrase from \$$var)"
  fi
done

# A self-signed CA, a server certificate for 127.0.0.1/localhost, and a client certificate for analyst-wmp (mTLS).
tls="$data/tls"
if [ ! -f "$tls/server.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/ca.key" -out "$tls/ca.pem" \
    -days 825 -subj "/CN=vault development CA" 2>/dev/null
  issue() {  # name, CN, extensions
    printf '%b' "$3" > "$tls/$1.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/$1.key" -out "$tls/$1.csr" \
      -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 825 \
      -out "$tls/$1.pem" -extfile "$tls/$1.ext" 2>/dev/null
  }
  issue server localhost 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
  issue analyst-wmp analyst-wmp 'extendedKeyUsage=clientAuth\n'
  chmod 600 "$tls"/*.key
  echo "created a development CA and server certificate in $tls"
fi

principals="ingest-wmp:uploader:wmp ingest-gmp:uploader:gmp analyst-wmp:analyst:wmp analyst-gmp:analyst:gmp
custodian-wmp:custodian:wmp custodian-gmp:custodian:gmp ops:ops:wmp,gmp dpo-wmp:auditor:wmp dpo-gmp:auditor:gmp"
config="$data/vaultd.toml"
if [ ! -f "$config" ]; then
  {
    echo "listen = \"127.0.0.1:$port\""
    echo 'data_dir = "."'
    echo 'custody = "../Keys.example"'
    echo
    echo '[tls]'
    echo 'certificate = "tls/server.pem"'
    echo 'private_key = "tls/server.key"'
    echo 'client_ca = "tls/ca.pem"'
    for p in $principals; do
      IFS=: read -r id role forces <<<"$p"
      echo
      echo '[[principals]]'
      echo "id = \"$id\""
      echo "$role = [\"${forces//,/\", \"}\"]"
    done
  } > "$config"
  for p in $principals; do
    id="${p%%:*}"
    (umask 077; "$vaultd" token create --config "$config" --principal "$id" --description "make run" \
      > "$data/tokens/$id.token")
  done
  echo "development principals and their tokens (shown once; also in $data/tokens/, mode 0600):"
  for p in $principals; do id="${p%%:*}"; printf '  %-14s %s\n' "$id" "$(cat "$data/tokens/$id.token")"; done
fi
cp -n /dev/null "$data/demo/.keep" 2>/dev/null || true
printf 'crime_ref,offence,occurred\nWMP-2026-000101,burglary dwelling,2026-11-02\nWMP-2026-000102,robbery,2026-11-03\n' \
  > "$data/demo/crime.csv"

cat <<EOT

vaultd serves https://127.0.0.1:$port from ./$data (Ctrl-C stops it). In another terminal, as the README shows:
  export VAULT_ADDR=https://127.0.0.1:$port VAULT_CACERT=\$PWD/$tls/ca.pem PATH=\$PWD/$bin:\$PATH
  VAULT_TOKEN_FILE=$data/tokens/ingest-wmp.token vault upload --force wmp --dataset crime-records $data/demo/crime.csv
  VAULT_TOKEN_FILE=$data/tokens/custodian-wmp.token vault use-case put --force wmp --id serious-violence --description 'SV duty' --lawful-basis 'PCSC Act 2022 s.8' --dataset crime-records --principal analyst-wmp
  VAULT_TOKEN_FILE=$data/tokens/analyst-wmp.token vault read --force wmp --dataset crime-records --use-case serious-violence --out crime.csv
  VAULT_TOKEN_FILE=$data/tokens/dpo-wmp.token vault audit export --force wmp --out wmp-audit.ndjson && vault audit verify wmp-audit.ndjson --public-key $data/audit-signing.pub
EOT
exec "$vaultd" serve --config "$config"
