# scripts/services.d/tls.sh: the local certificate authority (sourced by
# scripts/services).
# shellcheck shell=bash
#
# Made once, with the openssl CLI, under $TLS_DIR:
#   ca.pem / ca.key             the CA both services' certificates chain to
#   server.pem / server.key     for 127.0.0.1 and localhost: the broker's SSL
#                               listeners and PostgreSQL's ssl=on
#   server-keystore.pem         server.key + server.pem in one file, the form
#                               Kafka's PEM keystore reads
#   client.pem / client.key     a client certificate, for mutual TLS
#   other-ca.pem                a CA that signed nothing here: a client that
#                               trusts only it must refuse both services
# RSA 2048 keys in PKCS#8, valid for ten years. Test tooling, not payhook's
# build: payhook itself never runs openssl.

tls_ensure() {
  [[ -s "$TLS_DIR/other-ca.pem" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found; it makes the test certificates (apt-get install -y openssl)"
  log "tls: making a local CA and certificates in $(rel "$TLS_DIR")"
  rm -rf "$TLS_DIR.tmp"
  mkdir -p "$TLS_DIR.tmp"
  (
    cd "$TLS_DIR.tmp"
    tls_ca ca "payhook test CA"
    tls_leaf server ca "payhook test server" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
    tls_leaf client ca "payhook" "extendedKeyUsage=clientAuth"
    tls_ca other-ca "an unrelated CA"
    rm -f other-ca.key ./*.csr ./*.srl
    cat server.key server.pem >server-keystore.pem
    chmod 600 ./*.key server-keystore.pem
  ) >"$SVC_DIR/tls.log" 2>&1 || { show_tail "$SVC_DIR/tls.log"; die "tls: openssl failed; see $(rel "$SVC_DIR/tls.log")"; }
  rm -rf "$TLS_DIR"
  mv "$TLS_DIR.tmp" "$TLS_DIR"
}

# tls_ca NAME SUBJECT: a self-signed CA certificate NAME.pem and key NAME.key.
tls_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

# tls_leaf NAME CA SUBJECT EXTENSIONS: NAME.pem signed by CA, key NAME.key.
tls_leaf() {
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
    -days 3650 -out "$1.pem" -extfile <(printf 'basicConstraints=CA:FALSE\n%s\n' "$4")
}
