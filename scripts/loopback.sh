# Sourced by the benchmarks that run one replica on a quiet machine (scripts/bench-idle.sh,
# scripts/bench-heartbeat-cpu.sh): etcd and mini-consul over mutual TLS and one twinreg (release
# build) on loopback, in a temporary directory, all stopped when the script exits.
#
# loopback_up NAME PORTS [TOML]: PORTS is a two-digit port prefix (24: etcd 24790, its peers 24800,
# mini-consul 24500, twinreg 24443 and its admin listener 24090); TOML is appended to twinreg's
# configuration. Returns once twinreg's /readyz answers. Sets BIN, TMP, C (the certificates, with
# a client certificate `bench`), TWINREG_PID, and keeps `pids` (stopped on exit) and wait_ready.

BIN=target/release
pids=()
loopback_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap loopback_cleanup EXIT
trap 'exit 130' INT TERM

wait_ready() { # url [curl options]
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "${@:2}" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$LOOPBACK_NAME: $1 did not come up; logs in $TMP" >&2
  exit 1
}

loopback_up() { # name ports [toml]
  LOOPBACK_NAME=$1
  local p=$2 etcd=${ETCD_BIN:-etcd}
  command -v "$etcd" >/dev/null 2>&1 || scripts/setup.sh
  cargo build --release --locked --workspace --bins
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinreg-$1.XXXXXX")
  "$BIN/twinreg" certs dev --out "$TMP/certs" --client bench >/dev/null
  C=$TMP/certs
  local tls=(--cacert "$C/ca.pem" --cert "$C/server.pem" --key "$C/server-key.pem")
  "$etcd" --name "$1" --data-dir "$TMP/etcd" \
    --listen-client-urls "https://127.0.0.1:${p}790" --advertise-client-urls "https://127.0.0.1:${p}790" \
    --listen-peer-urls "http://127.0.0.1:${p}800" --initial-advertise-peer-urls "http://127.0.0.1:${p}800" \
    --initial-cluster "$1=http://127.0.0.1:${p}800" --cert-file "$C/server.pem" \
    --key-file "$C/server-key.pem" --trusted-ca-file "$C/ca.pem" --client-cert-auth \
    >"$TMP/etcd.log" 2>&1 &
  pids+=($!)
  "$BIN/mini-consul" --listen "127.0.0.1:${p}500" --tls-cert "$C/server.pem" \
    --tls-key "$C/server-key.pem" --tls-client-ca "$C/ca.pem" >"$TMP/consul.log" 2>&1 &
  pids+=($!)
  wait_ready "https://127.0.0.1:${p}790/health" "${tls[@]}"
  wait_ready "https://127.0.0.1:${p}500/v1/status/leader" "${tls[@]}"
  cat >"$TMP/twinreg.toml" <<EOF
[server]
listen = "127.0.0.1:${p}443"
admin_listen = "127.0.0.1:${p}090"
[tls]
cert = "$C/server.pem"
key = "$C/server-key.pem"
client_ca = "$C/ca.pem"
[etcd]
endpoints = ["https://127.0.0.1:${p}790"]
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
[consul]
address = "https://127.0.0.1:${p}500"
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
${3:-}
EOF
  "$BIN/twinreg" serve --config "$TMP/twinreg.toml" >"$TMP/twinreg.log" 2>&1 &
  TWINREG_PID=$!
  pids+=("$TWINREG_PID")
  wait_ready "http://127.0.0.1:${p}090/readyz"
}
