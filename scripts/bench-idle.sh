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
# shellcheck source=scripts/loopback.sh
. scripts/loopback.sh
loopback_up idle 24

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
