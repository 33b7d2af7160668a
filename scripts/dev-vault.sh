#!/usr/bin/env bash
# `make run`: vaultd on the embedded default (keyring custody, SQLite, files in ./vault-data, self-signed TLS),
# set up from nothing on first run and reused afterwards, and a third demo force, West Yorkshire Police (wyp), whose
# keys are held by its own custody service (`vaultd custody serve`, as if on the force's premises, in
# ./vault-data/custody-wyp). Prints how to use both, then serves until Ctrl-C (which stops the custody service too).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.build/release}"
vault="$bin/vault"
vaultd="$bin/vaultd"
port="${VAULT_PORT:-8443}"
custody_port="${VAULT_CUSTODY_PORT:-9443}"
data=vault-data
force_site="$data/custody-wyp"

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
# The platform's vaultd instances get their client certificates from a CA of their own, which issues nothing else:
# a force's custody service trusts it for platform instances, so it must never sign a person's certificate (the
# people's client CA above does that).
if [ ! -f "$tls/instances-ca.pem" ]; then
  rm -f "$tls/vaultd-a.pem"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/instances-ca.key" \
    -out "$tls/instances-ca.pem" -days 825 -subj "/CN=vault platform instances CA" 2>/dev/null
  chmod 600 "$tls/instances-ca.key"
fi
if [ ! -f "$tls/vaultd-a.pem" ]; then
  printf '%b' 'extendedKeyUsage=clientAuth\n' > "$tls/vaultd-a.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/vaultd-a.key" -out "$tls/vaultd-a.csr" \
    -subj "/CN=vaultd-a" 2>/dev/null
  openssl x509 -req -in "$tls/vaultd-a.csr" -CA "$tls/instances-ca.pem" -CAkey "$tls/instances-ca.key" \
    -CAcreateserial -days 825 -out "$tls/vaultd-a.pem" -extfile "$tls/vaultd-a.ext" 2>/dev/null
  chmod 600 "$tls/vaultd-a.key"
fi

# West Yorkshire Police's own custody service: its keyring, its CA and certificate, its custodians' tokens. Its
# passphrase is given to the custody service only, never to vaultd.
wyp_passphrase="${VAULT_PASSPHRASE_WYP:-dev-passphrase-wyp}"
if [ ! -f "$force_site/custody.toml" ]; then
  mkdir -p "$force_site/tls" "$force_site/tokens"
  chmod 700 "$force_site" "$force_site/tokens"
  VAULT_PASSPHRASE="$wyp_passphrase" "$vault" keyring init --force wyp --out "$force_site/wyp.keyring" >/dev/null
  printf '[forces.wyp]\nbackend = "keyring"\nkeyring = "wyp.keyring"\npassphrase_env = "VAULT_PASSPHRASE_WYP"\n' \
    > "$force_site/keys.toml"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$force_site/tls/ca.key" \
    -out "$force_site/tls/ca.pem" -days 825 -subj "/CN=wyp custody CA" 2>/dev/null
  printf '%b' 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$force_site/tls/custody.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$force_site/tls/custody.key" \
    -out "$force_site/tls/custody.csr" -subj "/CN=localhost" 2>/dev/null
  openssl x509 -req -in "$force_site/tls/custody.csr" -CA "$force_site/tls/ca.pem" -CAkey "$force_site/tls/ca.key" \
    -CAcreateserial -days 825 -out "$force_site/tls/custody.pem" -extfile "$force_site/tls/custody.ext" 2>/dev/null
  chmod 600 "$force_site/tls"/*.key
  cat > "$force_site/custody.toml" <<TOML
listen = "127.0.0.1:$custody_port"
data_dir = "data"
force = "wyp"
custody = "keys.toml"

[tls]
certificate = "tls/custody.pem"
private_key = "tls/custody.key"
platform_ca = "tls/platform-ca.pem"

[[principals]]
id = "custodian-wyp"
custodian = ["wyp"]

[[principals]]
id = "custodian2-wyp"
custodian = ["wyp"]

[[principals]]
id = "dpo-wyp"
auditor = ["wyp"]
TOML
  for id in custodian-wyp custodian2-wyp dpo-wyp; do
    (umask 077; "$vaultd" custody token create --config "$force_site/custody.toml" --principal "$id" \
      > "$force_site/tokens/$id.token")
  done
  echo "created the custody service of wyp in $force_site (its custodians' tokens in $force_site/tokens/)"
fi
# The CA of the platform's instances, as the force was given it (never the CA of the platform's people).
cp "$tls/instances-ca.pem" "$force_site/tls/platform-ca.pem"
VAULT_PASSPHRASE_WYP="$wyp_passphrase" setsid "$vaultd" custody serve --config "$force_site/custody.toml" \
  > "$force_site/custody.log" 2>&1 &
custody_pid=$!
trap 'kill "$custody_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -s --cacert "$force_site/tls/ca.pem" "https://127.0.0.1:$custody_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# The platform's side of wyp: where its custody service is, and its public key (no key of the force).
cp "$force_site/data/audit-signing.pub" "$data/wyp-custody.pub"
cp "$force_site/tls/ca.pem" "$tls/wyp-custody-ca.pem"
{
  cat Keys.example
  printf '\n# West Yorkshire Police: its keys are held by its own custody service (make run starts one locally).\n'
  printf '[forces.wyp]\nbackend = "remote"\nurl = "https://127.0.0.1:%s"\n' "$custody_port"
  printf 'ca = "tls/wyp-custody-ca.pem"\nclient_certificate = "tls/vaultd-a.pem"\nclient_key = "tls/vaultd-a.key"\n'
  printf 'custody_key = "wyp-custody.pub"\n'
} | sed 's#"vault-data/keyrings/#"keyrings/#' > "$data/keys.toml"

principals="ingest-wmp:uploader:wmp ingest-gmp:uploader:gmp analyst-wmp:analyst:wmp analyst-gmp:analyst:gmp
custodian-wmp:custodian:wmp custodian-gmp:custodian:gmp ops:ops:wmp,gmp,wyp dpo-wmp:auditor:wmp dpo-gmp:auditor:gmp
ingest-wyp:uploader:wyp analyst-wyp:analyst:wyp custodian-wyp:custodian:wyp custodian2-wyp:custodian:wyp
dpo-wyp:auditor:wyp"
config="$data/vaultd.toml"
if [ ! -f "$config" ]; then
  {
    echo "listen = \"127.0.0.1:$port\""
    echo 'data_dir = "."'
    echo 'custody = "keys.toml"'
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

The console for custodians, DPOs and operators: open https://127.0.0.1:$port/ui/ (the development CA is
./$tls/ca.pem; trust it in the browser, or accept the warning on this machine only) and paste a token, such as the
one in $data/tokens/custodian-wmp.token or $data/tokens/dpo-wmp.token.

West Yorkshire Police (wyp) holds its own keys: its custody service serves https://127.0.0.1:$custody_port from
./$force_site (as on the force's premises). Its custodians work there; its analysts sign their reads:
  export VAULT_CUSTODY_ADDR=https://127.0.0.1:$custody_port VAULT_CUSTODY_CACERT=\$PWD/$force_site/tls/ca.pem
  VAULT_CUSTODY_TOKEN_FILE=$force_site/tokens/custodian-wyp.token vault use-case put --server \$VAULT_CUSTODY_ADDR --ca-file \$VAULT_CUSTODY_CACERT --token-file $force_site/tokens/custodian-wyp.token --force wyp --id serious-violence --description 'SV duty' --lawful-basis 'PCSC Act 2022 s.8' --dataset crime-records --principal analyst-wyp
  vault keys principal-init --principal analyst-wyp --out analyst-wyp.key
  VAULT_CUSTODY_TOKEN_FILE=$force_site/tokens/custodian-wyp.token vault custody principal-put --force wyp --principal analyst-wyp --public-key analyst-wyp.key.pub
  VAULT_TOKEN_FILE=$data/tokens/ingest-wyp.token vault upload --force wyp --dataset crime-records $data/demo/crime.csv
  VAULT_TOKEN_FILE=$data/tokens/analyst-wyp.token vault read --force wyp --dataset crime-records --use-case serious-violence --out wyp.csv --signing-key analyst-wyp.key
  VAULT_TOKEN_FILE=$data/tokens/analyst-wyp.token vault read --force wyp --dataset crime-records --use-case serious-violence --out x.csv   # refused by the force: unsigned
  VAULT_TOKEN_FILE=$data/tokens/dpo-wyp.token vault audit export --force wyp --out wyp-audit.ndjson && vault audit verify wyp-audit.ndjson --public-key $data/audit-signing.pub --witness-key $data/wyp-custody.pub
EOT
"$vaultd" serve --config "$config"
