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
# shellcheck source=scripts/loopback.sh
. scripts/loopback.sh
# As in scripts/bench.sh: the load generator is one identity, and the per-identity rate limit
# would measure itself.
loopback_up hbcpu 25 $'[limits]\nrequests_per_second = 0'
"$BIN/twinreg-bench" echo --listen 127.0.0.1:25444 --cert "$C/server.pem" \
  --key "$C/server-key.pem" --client-ca "$C/ca.pem" >"$TMP/echo.log" 2>&1 &
ECHO_PID=$!
pids+=("$ECHO_PID")

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
  for who in "25444 echo $ECHO_PID" "25443 twinreg $TWINREG_PID"; do
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
