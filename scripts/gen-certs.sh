#!/usr/bin/env bash
# Makes the certificates of a TLS cluster with openssl: a private CA (once
# per folder) and, per node, a certificate that CA signs, valid for the
# node's host names and addresses, usable by its server and as its client
# certificate (mutual TLS).
#
#   scripts/gen-certs.sh DIR NAME[:HOST[,HOST...]] ...
#
# Writes DIR/ca.pem and DIR/ca.key (kept when DIR/ca.pem exists), and
# DIR/NAME.pem and DIR/NAME.key per NAME. HOSTs default to
# localhost,127.0.0.1; an address becomes an IP subject name, anything
# else a DNS one. Keys are P-256, certificates last 825 days. For
# development and tests: in production use your own CA.
set -euo pipefail

if (( $# < 2 )); then
  echo "usage: $0 DIR NAME[:HOST[,HOST...]] ..." >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "gen-certs: openssl is required (apt-get install openssl)" >&2; exit 1; }

dir=$1; shift
mkdir -p "$dir"
umask 077

# Several test clusters may make certificates in one folder at once: one
# writer at a time.
exec 9>"$dir/.lock"
flock 9

if [[ ! -f $dir/ca.pem ]]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -days 825 -subj "/CN=kvstore development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key.tmp" -out "$dir/ca.pem.tmp" 2>/dev/null
  mv "$dir/ca.key.tmp" "$dir/ca.key"
  mv "$dir/ca.pem.tmp" "$dir/ca.pem"
fi

for spec in "$@"; do
  name=${spec%%:*}
  hosts=localhost,127.0.0.1
  [[ $spec == *:* ]] && hosts=${spec#*:}
  if [[ ! $name =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "gen-certs: bad name '$name'" >&2; exit 2
  fi
  san=""
  IFS=, read -ra names <<<"$hosts"
  for h in "${names[@]}"; do
    [[ -z $h ]] && continue
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
  done
  san=${san%,}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 825 -out "$dir/$name.pem" \
    -extfile <(printf '%s\n' \
      "subjectAltName=$san" \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth,clientAuth") 2>/dev/null
  rm -f "$dir/$name.csr"
done
