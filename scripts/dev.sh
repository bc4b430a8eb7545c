#!/usr/bin/env bash
# Runs twinreg locally, no Docker: installs what is missing, generates dev certificates into
# certs/dev, starts etcd and Consul (a real `consul` if on PATH / CONSUL_BIN, else mini-consul) on
# loopback, then twinreg with config/dev.toml, and prints a curl register to try. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --bins
BIN=target/debug
STATE=.dev
mkdir -p "$STATE"

if [ ! -f certs/dev/ca.pem ]; then
  "$BIN/twinreg" certs dev --out certs/dev --client payments --client billing
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_for() { # url, name
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "dev: $2 did not come up; see $STATE/*.log" >&2
  exit 1
}

ETCD=${ETCD_BIN:-etcd}
"$ETCD" --name dev --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster dev=http://127.0.0.1:2380 >"$STATE/etcd.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:2379/health etcd

CONSUL=${CONSUL_BIN:-$(command -v consul || true)}
if [ -n "$CONSUL" ]; then
  "$CONSUL" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port 8500 >"$STATE/consul.log" 2>&1 &
  echo "dev: using real consul ($CONSUL)"
else
  "$BIN/mini-consul" --listen 127.0.0.1:8500 >"$STATE/consul.log" 2>&1 &
  echo "dev: no consul on PATH; using mini-consul"
fi
pids+=($!)
wait_for http://127.0.0.1:8500/v1/status/leader consul

"$BIN/twinreg" serve --config config/dev.toml 2>"$STATE/twinreg.log" &
pids+=($!)
wait_for http://127.0.0.1:9090/readyz twinreg

cat <<'MSG'

twinreg is up: REST on https://127.0.0.1:8443 (mTLS), admin on http://127.0.0.1:9090.
Logs in .dev/*.log. Try:

  curl --cacert certs/dev/ca.pem --cert certs/dev/payments.pem --key certs/dev/payments-key.pem \
       -X PUT https://127.0.0.1:8443/v1/services/payments/instances/pay-1 \
       -H 'Content-Type: application/json' \
       -d '{"address":"10.0.0.5","port":8080,"tags":["v2"],"meta":{"zone":"eu-1a"},"ttl_seconds":30}'

  curl --cacert certs/dev/ca.pem --cert certs/dev/payments.pem --key certs/dev/payments-key.pem \
       https://127.0.0.1:8443/v1/services/payments/instances

  etcdctl --endpoints http://127.0.0.1:2379 get --prefix /services/
  curl -s http://127.0.0.1:8500/v1/agent/services

Ctrl-C stops everything.
MSG
wait "${pids[2]}"
