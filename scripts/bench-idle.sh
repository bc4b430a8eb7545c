#!/usr/bin/env bash
# "The first call after a quiet night is as fast as any other": counts twinreg's TLS handshakes
# to its registries across an idle gap and the burst after it, on a quiet machine (nothing else
# talks to the registries, unlike the shared set-up of scripts/bench.sh).
#
# Usage: scripts/bench-idle.sh [IDLE_SECONDS, default 600]
# Starts etcd and mini-consul over mutual TLS and one twinreg (release build) on loopback, waits
# for /readyz, reads twinreg_registry_tls_handshakes_total, stays idle, runs a 5 s burst of
# registers and one of heartbeats at concurrency 64, and prints the handshakes made since
# start-up (expected: none) and the burst's latencies next to those of a burst before the gap.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-600}
ETCD=${ETCD_BIN:-etcd}
command -v "$ETCD" >/dev/null 2>&1 || scripts/setup.sh
cargo build --release --locked --workspace --bins
BIN=target/release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinreg-idle.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/twinreg" certs dev --out "$TMP/certs" --client bench >/dev/null
C=$TMP/certs
TLS=(--cacert "$C/ca.pem" --cert "$C/server.pem" --key "$C/server-key.pem")
wait_ready() { # url [curl options]
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "${@:2}" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "idle: $1 did not come up; logs in $TMP" >&2
  exit 1
}

"$ETCD" --name idle --data-dir "$TMP/etcd" \
  --listen-client-urls https://127.0.0.1:24790 --advertise-client-urls https://127.0.0.1:24790 \
  --listen-peer-urls http://127.0.0.1:24800 --initial-advertise-peer-urls http://127.0.0.1:24800 \
  --initial-cluster idle=http://127.0.0.1:24800 --cert-file "$C/server.pem" \
  --key-file "$C/server-key.pem" --trusted-ca-file "$C/ca.pem" --client-cert-auth \
  >"$TMP/etcd.log" 2>&1 &
pids+=($!)
"$BIN/mini-consul" --listen 127.0.0.1:24500 --tls-cert "$C/server.pem" \
  --tls-key "$C/server-key.pem" --tls-client-ca "$C/ca.pem" >"$TMP/consul.log" 2>&1 &
pids+=($!)
wait_ready https://127.0.0.1:24790/health "${TLS[@]}"
wait_ready https://127.0.0.1:24500/v1/status/leader "${TLS[@]}"

cat >"$TMP/twinreg.toml" <<EOF
[server]
listen = "127.0.0.1:24443"
admin_listen = "127.0.0.1:24090"
[tls]
cert = "$C/server.pem"
key = "$C/server-key.pem"
client_ca = "$C/ca.pem"
[etcd]
endpoints = ["https://127.0.0.1:24790"]
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
[consul]
address = "https://127.0.0.1:24500"
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
EOF
"$BIN/twinreg" serve --config "$TMP/twinreg.toml" >"$TMP/twinreg.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:24090/readyz

handshakes() { curl -fsS http://127.0.0.1:24090/metrics | grep '^twinreg_registry_tls_handshakes_total' || true; }
total() { handshakes | awk '{ s += $NF } END { print s + 0 }'; }
burst() { # label
  for op in register heartbeat; do
    "$BIN/twinreg-bench" run --url https://127.0.0.1:24443 --ca "$C/ca.pem" --cert "$C/bench.pem" \
      --key "$C/bench-key.pem" --label "$1" --op "$op" --instances 1000 --concurrency 64 \
      --warmup 0s --duration 5s 2>/dev/null
  done
}
START=$(total)
echo "idle: at readiness: $START handshakes"
handshakes
burst before-gap
echo "idle: idle for ${IDLE}s"
sleep "$IDLE"
burst after-gap
END=$(total)
echo "idle: handshakes after start-up, across the ${IDLE}s gap and the bursts: $((END - START))"
handshakes
