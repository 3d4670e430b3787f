#!/usr/bin/env bash
# Make a private CA and a server certificate for NATS (deploy/nats/tls.conf).
# Usage: deploy/scripts/gen-tls.sh OUT_DIR [DNS_NAME ...]   (default names: nats localhost)
# Writes OUT_DIR/ca.pem, ca-key.pem, server.pem, server-key.pem (server cert valid 825 days).
set -euo pipefail
OUT="${1:?usage: gen-tls.sh OUT_DIR [DNS_NAME ...]}"
shift
NAMES=("$@")
[ "${#NAMES[@]}" -gt 0 ] || NAMES=(nats localhost)
mkdir -p "$OUT"
SAN="IP:127.0.0.1"
for n in "${NAMES[@]}"; do SAN="$SAN,DNS:$n"; done
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Cadre NATS CA" \
  -keyout "$OUT/ca-key.pem" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${NAMES[0]}" \
  -keyout "$OUT/server-key.pem" -out "$OUT/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$SAN" >"$OUT/server.ext"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca-key.pem" -CAcreateserial \
  -days 825 -extfile "$OUT/server.ext" -out "$OUT/server.pem" 2>/dev/null
rm -f "$OUT/server.csr" "$OUT/server.ext" "$OUT/ca.srl"
chmod 600 "$OUT"/*-key.pem
chmod 644 "$OUT/ca.pem" "$OUT/server.pem"
echo "TLS material for ${NAMES[*]} in $OUT (CA: $OUT/ca.pem)"
