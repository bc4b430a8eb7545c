#!/usr/bin/env bash
# CPU per heartbeat: one twinreg replica against the echo server (the do-nothing mTLS front of
# scripts/bench.sh), on a quiet machine. Where the suite's throughput ratio moves with whatever
# else the shared cores run, the CPU each server spends per answered heartbeat does much less.
#
# Usage: scripts/bench-heartbeat-cpu.sh [PAIRS, default 10]
# Starts etcd and mini-consul over mutual TLS, the echo server and one twinreg (release build)
# on loopback; registers 1,000 instances; then PAIRS times runs 2 s of heartbeats at concurrency
# 64 against the echo server and twinreg in turn (`twinreg-bench run --op heartbeat`), reading
# each server's CPU (utime + stime, /proc/<pid>/stat) before and after its run. Prints every
# pair, then the medians: throughput ratio, CPU-per-heartbeat ratio (echo / twinreg: 1.0 means
# twinreg costs what the echo server costs) and each server's CPU per heartbeat.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-10}
ETCD=${ETCD_BIN:-etcd}
command -v "$ETCD" >/dev/null 2>&1 || scripts/setup.sh
cargo build --release --locked --workspace --bins
BIN=target/release
TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinreg-hbcpu.XXXXXX")
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
  echo "hbcpu: $1 did not come up; logs in $TMP" >&2
  exit 1
}

"$ETCD" --name hbcpu --data-dir "$TMP/etcd" \
  --listen-client-urls https://127.0.0.1:25790 --advertise-client-urls https://127.0.0.1:25790 \
  --listen-peer-urls http://127.0.0.1:25800 --initial-advertise-peer-urls http://127.0.0.1:25800 \
  --initial-cluster hbcpu=http://127.0.0.1:25800 --cert-file "$C/server.pem" \
  --key-file "$C/server-key.pem" --trusted-ca-file "$C/ca.pem" --client-cert-auth \
  >"$TMP/etcd.log" 2>&1 &
pids+=($!)
"$BIN/mini-consul" --listen 127.0.0.1:25500 --tls-cert "$C/server.pem" \
  --tls-key "$C/server-key.pem" --tls-client-ca "$C/ca.pem" >"$TMP/consul.log" 2>&1 &
pids+=($!)
"$BIN/twinreg-bench" echo --listen 127.0.0.1:25444 --cert "$C/server.pem" \
  --key "$C/server-key.pem" --client-ca "$C/ca.pem" >"$TMP/echo.log" 2>&1 &
ECHO_PID=$!
pids+=("$ECHO_PID")
wait_ready https://127.0.0.1:25790/health "${TLS[@]}"
wait_ready https://127.0.0.1:25500/v1/status/leader "${TLS[@]}"

# As in scripts/bench.sh: the load generator is one identity, and the per-identity rate limit
# would measure itself.
cat >"$TMP/twinreg.toml" <<EOF
[server]
listen = "127.0.0.1:25443"
admin_listen = "127.0.0.1:25090"
[tls]
cert = "$C/server.pem"
key = "$C/server-key.pem"
client_ca = "$C/ca.pem"
[etcd]
endpoints = ["https://127.0.0.1:25790"]
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
[consul]
address = "https://127.0.0.1:25500"
ca = "$C/ca.pem"
cert = "$C/server.pem"
key = "$C/server-key.pem"
[limits]
requests_per_second = 0
EOF
"$BIN/twinreg" serve --config "$TMP/twinreg.toml" >"$TMP/twinreg.log" 2>&1 &
TW_PID=$!
pids+=("$TW_PID")
wait_ready http://127.0.0.1:25090/readyz

run() { # port label [more run args]
  "$BIN/twinreg-bench" run --url "https://127.0.0.1:$1" --ca "$C/ca.pem" --cert "$C/bench.pem" \
    --key "$C/bench-key.pem" --label "$2" --instances 1000 --concurrency 64 "${@:3}" 2>/dev/null |
    tail -1
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run 25443 twinreg --op register --setup only >/dev/null
sleep 2
HZ=$(getconf CLK_TCK)
: >"$TMP/pairs"
for pair in $(seq 1 "$PAIRS"); do
  line="$pair"
  for who in "25444 echo $ECHO_PID" "25443 twinreg $TW_PID"; do
    read -r port label pid <<<"$who"
    before=$(ticks "$pid")
    out=$(run "$port" "$label" --op heartbeat --setup skip --warmup 300ms --duration 2s)
    after=$(ticks "$pid")
    line+=" $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ops_per_sec"])' "$out") $((after - before))"
  done
  echo "$line" >>"$TMP/pairs"
done
python3 - "$TMP/pairs" "$HZ" <<'PY'
import statistics as st, sys
hz = float(sys.argv[2])
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
# Each run is 0.3 s of warm-up and 2 s measured: CPU per heartbeat over the 2.3 s.
us = lambda ops, ticks: ticks / hz * 1e6 / (ops * 2.3)
print("pair  echo ops/s  twinreg ops/s  ratio  echo µs/hb  twinreg µs/hb")
for n, eo, et, to, tt in rows:
    print(f"{int(n):4}  {eo:10.0f}  {to:13.0f}  {to / eo:5.2f}  {us(eo, et):10.1f}  {us(to, tt):13.1f}")
ops = st.median(r[3] / r[1] for r in rows)
cpu = st.median(us(r[1], r[2]) / us(r[3], r[4]) for r in rows)
print(f"medians of {len(rows)} pairs: throughput {ops:.2f}x the echo server; CPU per heartbeat "
      f"echo/twinreg {cpu:.2f}; echo {st.median(us(r[1], r[2]) for r in rows):.1f} µs, "
      f"twinreg {st.median(us(r[3], r[4]) for r in rows):.1f} µs")
PY
