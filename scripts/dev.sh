#!/usr/bin/env bash
# Runs twinreg locally, no Docker: installs what running it needs (scripts/setup.sh), builds it,
# generates dev certificates into certs/dev, starts etcd and Consul (a real `consul` if on PATH /
# CONSUL_BIN, else mini-consul) on loopback, then twinreg with config/dev.toml, prints how long all
# that took and a curl register to try. Ctrl-C stops everything.
#
#   scripts/dev.sh            run until Ctrl-C
#   scripts/dev.sh --smoke    start everything, register one instance with the printed curl, read
#                             it back from etcd and from Consul, stop everything; exit 0, or
#                             non-zero naming the step that failed
#
# Ports (loopback): ETCD_PORT (2379), ETCD_PEER_PORT (2380), CONSUL_PORT (8500), LISTEN_PORT
# (8443, the mTLS API), ADMIN_PORT (9090). DEV_BIN_DIR=DIR uses the twinreg and mini-consul
# binaries in DIR instead of building them (the test of --smoke does, inside `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s.%N)

smoke=""
case "${1:-}" in
  "") ;;
  --smoke) smoke=1 ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 64 ;;
esac

ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
CONSUL_PORT=${CONSUL_PORT:-8500}
LISTEN_PORT=${LISTEN_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-9090}

step() { echo "dev: $*"; current_step=$*; }
fail() { echo "dev: FAILED at step '$current_step': $*" >&2; exit 1; }
current_step=setup

step "setup (scripts/setup.sh)"
scripts/setup.sh || fail "scripts/setup.sh exited non-zero (its message is above)"

if [ -n "${DEV_BIN_DIR:-}" ]; then
  BIN=$DEV_BIN_DIR
else
  step "build (cargo build)"
  cargo build --locked -p twinreg -p mini-consul || fail "cargo build failed (above)"
  BIN=target/debug
fi

STATE=.dev
if [ -n "$smoke" ]; then
  STATE=$(mktemp -d)
fi
mkdir -p "$STATE"

if [ ! -f certs/dev/ca.pem ]; then
  step "dev certificates (twinreg certs dev)"
  "$BIN/twinreg" certs dev --out certs/dev --client payments --client billing >/dev/null \
    || fail "twinreg certs dev failed"
fi

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$smoke" ]; then rm -rf "$STATE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # url, name, pid
  for _ in $(seq 1 300); do
    curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "dev: $2 did not come up; the end of $STATE/$2.log:" >&2
  tail -20 "$STATE/$2.log" >&2 || true
  fail "$2 did not answer $1"
}

step "etcd on 127.0.0.1:$ETCD_PORT"
ETCD=${ETCD_BIN:-etcd}
"$ETCD" --name dev --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "dev=http://127.0.0.1:$ETCD_PEER_PORT" >"$STATE/etcd.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$ETCD_PORT/health" etcd "$!"

CONSUL=${CONSUL_BIN:-$(command -v consul || true)}
if [ -n "$CONSUL" ]; then
  step "consul on 127.0.0.1:$CONSUL_PORT (real consul: $CONSUL)"
  "$CONSUL" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port "$CONSUL_PORT" >"$STATE/consul.log" 2>&1 &
else
  step "consul on 127.0.0.1:$CONSUL_PORT (no consul on PATH: mini-consul)"
  "$BIN/mini-consul" --listen "127.0.0.1:$CONSUL_PORT" >"$STATE/consul.log" 2>&1 &
fi
pids+=($!)
wait_for "http://127.0.0.1:$CONSUL_PORT/v1/status/leader" consul "$!"

step "twinreg on 127.0.0.1:$LISTEN_PORT (admin 127.0.0.1:$ADMIN_PORT)"
TWINREG_SERVER__LISTEN="127.0.0.1:$LISTEN_PORT" TWINREG_SERVER__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
  TWINREG_ETCD__ENDPOINTS="[\"http://127.0.0.1:$ETCD_PORT\"]" \
  TWINREG_CONSUL__ADDRESS="http://127.0.0.1:$CONSUL_PORT" \
  "$BIN/twinreg" serve --config config/dev.toml 2>"$STATE/twinreg.log" &
pids+=($!)
twinreg_pid=$!
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" twinreg "$twinreg_pid"

took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
echo "dev: twinreg ready ${took} s after scripts/dev.sh started (set-up, build, certificates, etcd, Consul, twinreg)"

CURL="curl -sS --cacert certs/dev/ca.pem --cert certs/dev/payments.pem --key certs/dev/payments-key.pem"
REGISTER="$CURL -X PUT https://127.0.0.1:$LISTEN_PORT/v1/services/payments/instances/pay-1 -H 'Content-Type: application/json' -d '{\"address\":\"10.0.0.5\",\"port\":8080,\"tags\":[\"v2\"],\"meta\":{\"zone\":\"eu-1a\"},\"ttl_seconds\":30}'"
LIST="$CURL https://127.0.0.1:$LISTEN_PORT/v1/services/payments/instances"
ETCDCTL="etcdctl --endpoints http://127.0.0.1:$ETCD_PORT get --prefix /services/payments/"
AGENT="curl -sS http://127.0.0.1:$CONSUL_PORT/v1/agent/services"

cat <<MSG

twinreg is up: REST and gRPC on https://127.0.0.1:$LISTEN_PORT (mTLS), admin on http://127.0.0.1:$ADMIN_PORT.
Logs in $STATE/*.log. Try:

  $REGISTER

  $LIST

  $ETCDCTL
  $AGENT

MSG

if [ -z "$smoke" ]; then
  echo "Ctrl-C stops everything."
  wait "$twinreg_pid"
  exit $?
fi

step "register pay-1 with the curl above"
answer=$(eval "$REGISTER") || fail "curl failed: $answer"
echo "$answer"
grep -q '"registered":true' <<<"$answer" || fail "the answer does not say registered: $answer"

step "read pay-1 back from etcd (etcdctl)"
in_etcd=$(ETCDCTL_API=3 $ETCDCTL) || fail "etcdctl failed: $in_etcd"
grep -q '"address":"10.0.0.5"' <<<"$in_etcd" || fail "etcd holds no record of pay-1: '$in_etcd'"

step "read pay-1 back from Consul (agent/services)"
in_consul=$($AGENT) || fail "curl to Consul failed: $in_consul"
grep -q '"payments.pay-1"' <<<"$in_consul" || fail "Consul holds no service payments.pay-1: '$in_consul'"

step "stop everything"
kill "$twinreg_pid"
wait "$twinreg_pid" || fail "twinreg exited non-zero on SIGTERM; the end of its log: $(tail -5 "$STATE/twinreg.log")"
echo "dev: smoke test passed: registered through twinreg, found in etcd and in Consul"
