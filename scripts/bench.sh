#!/usr/bin/env bash
# Measures what twinreg costs against what a service pays without it, on this machine:
#   (a) register throughput at concurrency 64: etcd directly (baseline) vs twinreg
#   (b) heartbeat throughput at concurrency 64: a do-nothing mTLS server (echo, the ceiling of any
#       front here) vs twinreg with heartbeat coalescing off (A) and on (B)
#   (c) p50 latency at concurrency 1, register and heartbeat: baseline vs twinreg A
#   (d) start-up time to /readyz          (e) registry operations per client heartbeat (B)
#   (f) register p99 while etcd is frozen (g) RSS with many instances (B)
#   (h) TLS handshakes to the registries after start-up, after the runs, after an idle gap
# (a)-(c) alternate the targets within each round and report the median over the rounds.
# Everything runs on loopback ports of its own (etcd 23790/23800, Consul 18500, echo 19443,
# twinreg 18443-18445 / admin 19090-19092), so it does not collide with scripts/dev.sh.
#
# Usage: scripts/bench.sh [--rounds N] [--duration 10s] [--quick]
#   --quick: 1 round of 2 s runs and small instance counts, a smoke test of a couple of minutes.
# Environment: ETCD_BIN, CONSUL_BIN (a real `consul`, else mini-consul), IDLE_SECONDS (idle gap
# before the last handshake count, e.g. 600; skipped when unset), TWINREG_LOG, and the sizes
# below (INSTANCES, PACED_INSTANCES, RSS_INSTANCES, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
COMMAND="scripts/bench.sh${*:+ $*}"
# The exact command includes the environment that changes what is measured.
for v in ETCD_BIN CONSUL_BIN IDLE_SECONDS TWINREG_LOG CONCURRENCY INSTANCES C1_INSTANCES WARMUP \
  PACED_INSTANCES PACED_INTERVAL PACED_DURATION FREEZE_OPEN RSS_INSTANCES RSS_INTERVAL \
  RSS_DURATION SETTLE_MAX; do
  if [ -n "${!v:-}" ]; then COMMAND="$v=${!v} $COMMAND"; fi
done

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
ROUNDS_ARG=""
DURATION_ARG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS_ARG=${2:?--rounds needs a number}; shift 2 ;;
    --duration) DURATION_ARG=${2:?--duration needs a duration like 10s}; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench: unknown argument '$1'" >&2; usage >&2; exit 64 ;;
  esac
done

# Sizes: full run, then --quick. The environment overrides each (e.g. RSS_INSTANCES=20000).
# Closed-loop runs rotate over INSTANCES (C1_INSTANCES at concurrency 1, where the untimed
# registration before a heartbeat run is sequential).
size() { # name full quick
  local v=$2
  [ "$QUICK" = 0 ] || v=$3
  printf -v "$1" '%s' "${!1:-$v}"
}
size CONCURRENCY 64 64
size INSTANCES 1000 1000
size C1_INSTANCES 100 100
size WARMUP 1s 500ms
size PACED_INSTANCES 10000 1000 # (e): ttl 30 s, a heartbeat every PACED_INTERVAL each
size PACED_INTERVAL 2s 2s
size PACED_DURATION 60s 10s
size FREEZE_OPEN 5s 3s          # (f): registers against a frozen etcd before the measurement
size RSS_INSTANCES 100000 5000  # (g): ttl 300 s, each heartbeating once per RSS_INTERVAL
size RSS_INTERVAL 30s 6s
size RSS_DURATION 30s 6s
size SETTLE_MAX 300 120         # seconds to wait for breakers to close and repairs to drain
PACED_INTERVAL_S=${PACED_INTERVAL%s}
[[ $PACED_INTERVAL_S =~ ^[1-9][0-9]*$ ]] || { echo "bench: PACED_INTERVAL must be whole seconds, e.g. 2s" >&2; exit 64; }
if [ "$QUICK" = 1 ]; then ROUNDS=1 DURATION=2s; else ROUNDS=3 DURATION=10s; fi
ROUNDS=${ROUNDS_ARG:-$ROUNDS}
DURATION=${DURATION_ARG:-$DURATION}

# What each line is held against (the "target" column); change them here.
# Issue 4's targets; p99 rows have none (shown for context).
T_REGISTER_OPS="≥ 0.8×"
T_REGISTER_P99="—"
T_HEARTBEAT_OPS_OFF="≥ 0.6×"
T_HEARTBEAT_OPS_ON="≥ 0.9×"
T_HEARTBEAT_P99="—"
T_C1_P50="≤ baseline + 1 ms"
T_STARTUP="≤ 1000 ms"
T_OPS_PER_HEARTBEAT="≤ 0.2"
T_FROZEN="≤ 1.5×"
T_RSS="≤ 200 MiB"
T_HANDSHAKES="0 after start-up"

ETCD_PORT=23790 ETCD_PEER_PORT=23800 CONSUL_PORT=18500 ECHO_PORT=19443
A_PORT=18443 A_ADMIN_PORT=19090 B_PORT=18444 B_ADMIN_PORT=19091 C_PORT=18445 C_ADMIN_PORT=19092
A_ADMIN=http://127.0.0.1:$A_ADMIN_PORT B_ADMIN=http://127.0.0.1:$B_ADMIN_PORT
ETCD=${ETCD_BIN:-etcd}
# mini-consul is run with mutual TLS; a real `consul agent -dev` serves plain HTTP.
if [ -n "${CONSUL_BIN:-}" ]; then CONSUL_URL=http://127.0.0.1:$CONSUL_PORT; else CONSUL_URL=https://127.0.0.1:$CONSUL_PORT; fi

command -v "$ETCD" >/dev/null 2>&1 || scripts/setup.sh
command -v curl >/dev/null 2>&1 || scripts/setup.sh
cargo build --release --bins
BIN=target/release
BENCH=$BIN/twinreg-bench

TMP=$(mktemp -d "${TMPDIR:-/tmp}/twinreg-bench.XXXXXX")
RESULTS=$TMP/results.jsonl
mkdir -p "$TMP/logs" "$TMP/measures"
: >"$RESULTS"
echo "bench: working in $TMP" >&2

pids=()
ETCD_PID=""
cleanup() {
  # A frozen etcd would not act on SIGTERM until continued.
  [ -z "$ETCD_PID" ] || kill -CONT "$ETCD_PID" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP/etcd"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: $*" >&2; exit 1; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $ETCD_PORT $ETCD_PEER_PORT $CONSUL_PORT $ECHO_PORT $A_PORT $A_ADMIN_PORT $B_PORT \
  $B_ADMIN_PORT $C_PORT $C_ADMIN_PORT; do
  if port_in_use "$p"; then die "port $p is in use (an earlier bench still running?)"; fi
done

wait_ready() { # url name [curl options]
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "${@:3}" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "$2 did not come up; see $TMP/logs/$2.log"
}

# --- certificates and configuration --------------------------------------------------------
# One client certificate per service a scenario uses: twinreg's default rule lets a client write
# the service its certificate names, so no admin grant changes the authorization path measured.
"$BIN/twinreg" certs dev --out "$TMP/certs" --client bench --client paced --client rss >/dev/null
CERTS=$TMP/certs

write_config() { # file listen admin-listen coalesce
  cat >"$1" <<EOF
[server]
listen = "$2"
admin_listen = "$3"
drain_delay = "0s"
shutdown_grace = "2s"

[tls]
cert = "$CERTS/server.pem"
key = "$CERTS/server-key.pem"
client_ca = "$CERTS/ca.pem"

[etcd]
endpoints = ["https://127.0.0.1:$ETCD_PORT"]
ca = "$CERTS/ca.pem"
cert = "$CERTS/server.pem"
key = "$CERTS/server-key.pem"

[consul]
address = "$CONSUL_URL"
ca = "$CERTS/ca.pem"
cert = "$CERTS/server.pem"
key = "$CERTS/server-key.pem"

[heartbeat]
coalesce = $4

# The load generator is one identity; the per-identity rate limit would measure itself.
[limits]
requests_per_second = 0
max_concurrent_streams = 1024
EOF
}
write_config "$TMP/a.toml" "127.0.0.1:$A_PORT" "127.0.0.1:$A_ADMIN_PORT" false
"$BIN/twinreg" check-config --config "$TMP/a.toml" >"$TMP/logs/check-config.log" 2>&1 ||
  die "generated config rejected: $(cat "$TMP/logs/check-config.log")"
write_config "$TMP/b.toml" "127.0.0.1:$B_PORT" "127.0.0.1:$B_ADMIN_PORT" true
write_config "$TMP/c.toml" "127.0.0.1:$C_PORT" "127.0.0.1:$C_ADMIN_PORT" false

# --- servers ---------------------------------------------------------------------------------
spawn() { # name command...: runs it in the background, logging to logs/NAME.log; sets PID
  local name=$1
  shift
  "$@" >"$TMP/logs/$name.log" 2>&1 &
  PID=$!
  pids+=("$PID")
}

# Both registries speak mutual TLS, as in production (the server certificate doubles as the
# client certificate of twinreg and of the baseline); so TLS handshakes can be counted.
spawn etcd "$ETCD" --name bench --data-dir "$TMP/etcd" \
  --listen-client-urls "https://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
  --cert-file "$CERTS/server.pem" --key-file "$CERTS/server-key.pem" \
  --trusted-ca-file "$CERTS/ca.pem" --client-cert-auth \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT"
ETCD_PID=$PID
CURL_TLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/server.pem" --key "$CERTS/server-key.pem")
wait_ready "https://127.0.0.1:$ETCD_PORT/health" etcd "${CURL_TLS[@]}"

if [ -n "${CONSUL_BIN:-}" ]; then
  spawn consul "$CONSUL_BIN" agent -dev -bind 127.0.0.1 -client 127.0.0.1 \
    -http-port "$CONSUL_PORT" -dns-port -1 -grpc-port -1 \
    -server-port 18300 -serf-lan-port 18301 -serf-wan-port 18302
  CONSUL_KIND="consul ($CONSUL_BIN)"
else
  spawn consul "$BIN/mini-consul" --listen "127.0.0.1:$CONSUL_PORT" \
    --tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server-key.pem" --tls-client-ca "$CERTS/ca.pem"
  CONSUL_KIND="mini-consul over mutual TLS"
fi
wait_ready "$CONSUL_URL/v1/status/leader" consul "${CURL_TLS[@]}"

spawn echo "$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" --cert "$CERTS/server.pem" \
  --key "$CERTS/server-key.pem" --client-ca "$CERTS/ca.pem"
for _ in $(seq 1 100); do port_in_use "$ECHO_PORT" && break; sleep 0.1; done

spawn twinreg-a "$BIN/twinreg" serve --config "$TMP/a.toml"
A_PID=$PID
spawn twinreg-b "$BIN/twinreg" serve --config "$TMP/b.toml"
B_PID=$PID
wait_ready "$A_ADMIN/readyz" twinreg-a
wait_ready "$B_ADMIN/readyz" twinreg-b

# --- helpers ---------------------------------------------------------------------------------
metric_sum() { # admin-url metric [label=value ...]: sum of the matching series, or n/a
  local admin=$1 name=$2
  shift 2
  curl -fsS "$admin/metrics" | awk -v name="$name" -v want="$*" '
    index($1, name "{") == 1 || $1 == name {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) if (!index($1, w[i])) next
      s += $NF; found = 1
    }
    END { if (found) printf "%.0f\n", s; else print "n/a" }'
}

# Whether no breaker of twinreg at ADMIN is open and no repair is pending.
quiet() {
  local pending
  pending=$(metric_sum "$1" twinreg_repairs_pending)
  [ "$(metric_sum "$1" twinreg_breaker_state)" = 0 ] && { [ "$pending" = 0 ] || [ "$pending" = n/a ]; }
}
# Waits (at most SETTLE_MAX s) until twinreg at ADMIN is quiet, so that the previous scenario's
# recovery does not leak into the next one's numbers.
settle() { # admin-url name
  for _ in $(seq 1 $((SETTLE_MAX * 2))); do
    quiet "$1" && return 0
    sleep 0.5
  done
  echo "bench: $2 did not settle in ${SETTLE_MAX}s (breakers open or repairs pending)" >&2
}

field() { sed -nE "s/.*\"$2\":(-?[0-9.]+).*/\1/p" <<<"$1"; }
ERRORS=()
# bench MEASURE ROUND twinreg-bench-args...: one run; its JSON line (tagged with the measure and
# round) goes to results.jsonl and into LAST.
bench() {
  local measure=$1 round=$2
  shift 2
  LAST=$("$BENCH" "$@" 2>>"$TMP/logs/twinreg-bench.log") ||
    die "twinreg-bench $* failed; see $TMP/logs/twinreg-bench.log"
  printf '{"measure":"%s","round":%s,%s\n' "$measure" "$round" "${LAST#\{}" >>"$RESULTS"
  local errors
  errors=$(field "$LAST" errors)
  [ "$errors" = 0 ] || ERRORS+=("$measure round $round: $errors errors, e.g. $(sed -nE 's/.*"error_sample":\[(.*)\].*/\1/p' <<<"$LAST" | cut -c1-300)")
  printf '  %-28s %10s ops/s  p50 %7s µs  p99 %8s µs  errors %s\n' "$measure" \
    "$(field "$LAST" ops_per_sec)" "$(field "$LAST" p50_us)" "$(field "$LAST" p99_us)" "$errors" >&2
}
keep() { echo "$2" >>"$TMP/measures/$1"; } # keep KEY VALUE: one round's value of a measure
median() {
  [ -s "$TMP/measures/$1" ] || { echo n/a; return; }
  sort -g "$TMP/measures/$1" | awk '{ v[NR] = $1 } END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {
  if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f×\n", a / b }'; }

TWINREG_RUN=(run --ca "$CERTS/ca.pem" --cert "$CERTS/bench.pem" --key "$CERTS/bench-key.pem"
  --concurrency "$CONCURRENCY" --instances "$INSTANCES" --duration "$DURATION" --warmup "$WARMUP")
A_RUN=("${TWINREG_RUN[@]}" --url "https://127.0.0.1:$A_PORT")
B_RUN=("${TWINREG_RUN[@]}" --url "https://127.0.0.1:$B_PORT" --label twinreg-coalesce)
ECHO_RUN=("${TWINREG_RUN[@]}" --url "https://127.0.0.1:$ECHO_PORT" --label echo)
BASELINE=(baseline --etcd "https://127.0.0.1:$ETCD_PORT" --etcd-ca "$CERTS/ca.pem"
  --etcd-cert "$CERTS/server.pem" --etcd-key "$CERTS/server-key.pem" --concurrency "$CONCURRENCY"
  --instances "$INSTANCES" --duration "$DURATION" --warmup "$WARMUP")
C1=(--concurrency 1 --instances "$C1_INSTANCES")

HANDSHAKES_START=$(metric_sum "$A_ADMIN" twinreg_registry_tls_handshakes_total)

# --- (a)-(c): rounds --------------------------------------------------------------------------
for round in $(seq 1 "$ROUNDS"); do
  echo "bench: round $round of $ROUNDS" >&2
  bench register_c64_baseline "$round" "${BASELINE[@]}" --op register
  keep reg_ops_base "$(field "$LAST" ops_per_sec)"; keep reg_p99_base "$(field "$LAST" p99_us)"
  bench register_c64_twinreg "$round" "${A_RUN[@]}" --op register
  keep reg_ops_a "$(field "$LAST" ops_per_sec)"; keep reg_p99_a "$(field "$LAST" p99_us)"

  bench heartbeat_c64_echo "$round" "${ECHO_RUN[@]}" --op heartbeat
  keep hb_ops_echo "$(field "$LAST" ops_per_sec)"; keep hb_p99_echo "$(field "$LAST" p99_us)"
  bench heartbeat_c64_twinreg "$round" "${A_RUN[@]}" --op heartbeat
  keep hb_ops_a "$(field "$LAST" ops_per_sec)"; keep hb_p99_a "$(field "$LAST" p99_us)"
  bench heartbeat_c64_twinreg_coalesce "$round" "${B_RUN[@]}" --op heartbeat
  keep hb_ops_b "$(field "$LAST" ops_per_sec)"; keep hb_p99_b "$(field "$LAST" p99_us)"

  bench register_c1_baseline "$round" "${BASELINE[@]}" "${C1[@]}" --op register
  keep reg1_p50_base "$(field "$LAST" p50_us)"
  bench register_c1_twinreg "$round" "${A_RUN[@]}" "${C1[@]}" --op register
  keep reg1_p50_a "$(field "$LAST" p50_us)"
  bench heartbeat_c1_baseline "$round" "${BASELINE[@]}" "${C1[@]}" --op heartbeat
  keep hb1_p50_base "$(field "$LAST" p50_us)"
  bench heartbeat_c1_twinreg "$round" "${A_RUN[@]}" "${C1[@]}" --op heartbeat
  keep hb1_p50_a "$(field "$LAST" p50_us)"
done

# --- (d) start-up: spawn to /readyz 200 ---------------------------------------------------------
echo "bench: start-up" >&2
started=$(date +%s%N)
spawn twinreg-c "$BIN/twinreg" serve --config "$TMP/c.toml"
C_PID=$PID
STARTUP_MS=n/a
for _ in $(seq 1 3000); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$C_ADMIN_PORT/readyz" 2>/dev/null; then
    STARTUP_MS=$((($(date +%s%N) - started) / 1000000))
    break
  fi
  sleep 0.01
done
kill "$C_PID"
wait "$C_PID" 2>/dev/null || true
echo "  start-up to /readyz: $STARTUP_MS ms" >&2

# --- (f) frozen etcd: register p99 on A before and while etcd is stopped -----------------------
echo "bench: frozen etcd" >&2
bench frozen_healthy 0 "${A_RUN[@]}" --op register
FROZEN_BEFORE=$(field "$LAST" p99_us)
kill -STOP "$ETCD_PID"
bench frozen_breaker_opening 0 "${A_RUN[@]}" --op register --duration "$FREEZE_OPEN" --warmup 0s
BREAKER_ETCD=$(metric_sum "$A_ADMIN" twinreg_breaker_state 'registry="etcd"')
echo "  etcd breaker state after ${FREEZE_OPEN} frozen: $BREAKER_ETCD (2 = open)" >&2
bench frozen_etcd 0 "${A_RUN[@]}" --op register
FROZEN_DURING=$(field "$LAST" p99_us)
kill -CONT "$ETCD_PID"
settle "$A_ADMIN" twinreg-a
settle "$B_ADMIN" twinreg-b

# --- (e) registry operations per client heartbeat, on B ------------------------------------------
echo "bench: registry operations per heartbeat ($PACED_INSTANCES instances, every $PACED_INTERVAL)" >&2
PACED=(run --ca "$CERTS/ca.pem" --cert "$CERTS/paced.pem" --key "$CERTS/paced-key.pem"
  --url "https://127.0.0.1:$B_PORT" --label twinreg-coalesce --service paced
  --concurrency "$CONCURRENCY" --instances "$PACED_INSTANCES" --ttl 30)
bench paced_register 0 "${PACED[@]}" --op register --setup only
# Registering them may take longer than their ttl here: keep them heartbeating (unmeasured,
# registering again any that expired meanwhile) until none is lost any more and B has finished
# repairing what the registration load made a registry miss. Only then is B in the steady state
# the measurement is about.
"$BENCH" "${PACED[@]}" --op heartbeat --setup skip --reregister --interval "$PACED_INTERVAL" \
  --duration 1h >/dev/null 2>>"$TMP/logs/twinreg-bench.log" &
KEEPALIVE=$!
pids+=("$KEEPALIVE")
steady=0 last404=""
for _ in $(seq 1 "$SETTLE_MAX"); do
  sleep 1
  now404=$(metric_sum "$B_ADMIN" twinreg_http_requests_total 'route="heartbeat"' 'status="404"')
  if [ "$now404" = "$last404" ] && quiet "$B_ADMIN"; then
    steady=$((steady + 1))
  else
    steady=0
  fi
  last404=$now404
  # Steady for two intervals: every instance was heartbeated twice without a 404.
  [ "$steady" -le $((2 * PACED_INTERVAL_S)) ] || break
done
[ "$steady" -gt 0 ] || echo "bench: twinreg-b did not reach a steady state in ${SETTLE_MAX}s" >&2
kill "$KEEPALIVE"
wait "$KEEPALIVE" 2>/dev/null || true
hb_ops() { # no series yet means no such operation yet: 0
  local v
  v=$(metric_sum "$B_ADMIN" twinreg_registry_operations_total 'op="heartbeat"' "$@")
  echo "${v/n\/a/0}"
}
# "Operations" here are every outcome, including calls an open breaker skipped (breaker_open),
# which are counted apart as well.
before_all=$(hb_ops) before_etcd=$(hb_ops 'registry="etcd"') before_consul=$(hb_ops 'registry="consul"')
before_skipped=$(hb_ops 'outcome="breaker_open"')
bench paced_heartbeat 0 "${PACED[@]}" --op heartbeat --setup skip --reregister \
  --interval "$PACED_INTERVAL" --duration "$PACED_DURATION"
PACED_RATE="$(field "$LAST" ops_per_sec)/s of $(field "$LAST" scheduled_per_sec)/s scheduled"
after_all=$(hb_ops) after_etcd=$(hb_ops 'registry="etcd"') after_consul=$(hb_ops 'registry="consul"')
after_skipped=$(hb_ops 'outcome="breaker_open"')
SENT=$(($(field "$LAST" ops) + $(field "$LAST" errors)))
per_heartbeat() { awk -v a="$1" -v b="$2" -v n="$SENT" 'BEGIN {
  if (a == "n/a" || b == "n/a" || n == 0) print "n/a"; else printf "%.3f\n", (b - a) / n }'; }
OPS_PER_HB=$(per_heartbeat "$before_all" "$after_all")
OPS_PER_HB_ETCD=$(per_heartbeat "$before_etcd" "$after_etcd")
OPS_PER_HB_CONSUL=$(per_heartbeat "$before_consul" "$after_consul")
OPS_PER_HB_SKIPPED=$(per_heartbeat "${before_skipped/n\/a/0}" "${after_skipped/n\/a/0}")
echo "  registry heartbeat operations per client heartbeat: $OPS_PER_HB (etcd $OPS_PER_HB_ETCD, consul $OPS_PER_HB_CONSUL, skipped by a breaker $OPS_PER_HB_SKIPPED) over $SENT heartbeats" >&2

# --- (g) RSS of B with many instances ------------------------------------------------------------
echo "bench: RSS with $RSS_INSTANCES instances" >&2
RSS=(run --ca "$CERTS/ca.pem" --cert "$CERTS/rss.pem" --key "$CERTS/rss-key.pem"
  --url "https://127.0.0.1:$B_PORT" --label twinreg-coalesce --service rss
  --concurrency "$CONCURRENCY" --instances "$RSS_INSTANCES" --ttl 300)
bench rss_register 0 "${RSS[@]}" --op register --setup only
bench rss_heartbeat 0 "${RSS[@]}" --op heartbeat --setup skip --reregister \
  --interval "$RSS_INTERVAL" --duration "$RSS_DURATION"
RSS_MIB=$(awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$B_PID/status")
HWM_MIB=$(awk '/^VmHWM:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$B_PID/status")
echo "  twinreg B: VmRSS $RSS_MIB MiB, VmHWM $HWM_MIB MiB" >&2

# --- (h) TLS handshakes to the registries, on A ------------------------------------------------
HANDSHAKES_END=$(metric_sum "$A_ADMIN" twinreg_registry_tls_handshakes_total)
delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else print b - a }'; }
HANDSHAKES_RUNS=$(delta "$HANDSHAKES_START" "$HANDSHAKES_END")
HANDSHAKES_IDLE="not run (set IDLE_SECONDS)"
if [ -n "${IDLE_SECONDS:-}" ]; then
  echo "bench: idle for ${IDLE_SECONDS}s, then a 5 s burst of registers" >&2
  sleep "$IDLE_SECONDS"
  bench idle_burst 0 "${A_RUN[@]}" --op register --duration 5s --warmup 0s
  HANDSHAKES_IDLE=$(delta "$HANDSHAKES_END" "$(metric_sum "$A_ADMIN" twinreg_registry_tls_handshakes_total)")
fi

# --- report ---------------------------------------------------------------------------------------
row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
us_plus() { awk -v a="$1" -v b="$2" 'BEGIN {
  if (a == "n/a" || b == "n/a") print "n/a"; else printf "%s µs (%+d µs)\n", b, b - a }'; }

echo
echo "## twinreg bench ($ROUNDS round(s), medians; $DURATION runs at concurrency $CONCURRENCY unless said)"
echo
row measure "baseline / ceiling" twinreg ratio target
row --- --- --- --- ---
row "register ops/s, c$CONCURRENCY (etcd direct)" "$(median reg_ops_base)" "$(median reg_ops_a)" \
  "$(ratio "$(median reg_ops_a)" "$(median reg_ops_base)")" "$T_REGISTER_OPS"
row "register p99 µs, c$CONCURRENCY" "$(median reg_p99_base)" "$(median reg_p99_a)" \
  "$(ratio "$(median reg_p99_a)" "$(median reg_p99_base)")" "$T_REGISTER_P99"
row "heartbeat ops/s, c$CONCURRENCY, coalescing off (echo)" "$(median hb_ops_echo)" \
  "$(median hb_ops_a)" "$(ratio "$(median hb_ops_a)" "$(median hb_ops_echo)")" "$T_HEARTBEAT_OPS_OFF"
row "heartbeat ops/s, c$CONCURRENCY, coalescing on (echo)" "$(median hb_ops_echo)" \
  "$(median hb_ops_b)" "$(ratio "$(median hb_ops_b)" "$(median hb_ops_echo)")" "$T_HEARTBEAT_OPS_ON"
row "heartbeat p99 µs, c$CONCURRENCY, coalescing off (echo)" "$(median hb_p99_echo)" \
  "$(median hb_p99_a)" "$(ratio "$(median hb_p99_a)" "$(median hb_p99_echo)")" "$T_HEARTBEAT_P99"
row "heartbeat p99 µs, c$CONCURRENCY, coalescing on (echo)" "$(median hb_p99_echo)" \
  "$(median hb_p99_b)" "$(ratio "$(median hb_p99_b)" "$(median hb_p99_echo)")" "$T_HEARTBEAT_P99"
row "register p50, c1 (etcd direct)" "$(median reg1_p50_base) µs" \
  "$(us_plus "$(median reg1_p50_base)" "$(median reg1_p50_a)")" \
  "$(ratio "$(median reg1_p50_a)" "$(median reg1_p50_base)")" "$T_C1_P50"
row "heartbeat p50, c1 (etcd keep-alive)" "$(median hb1_p50_base) µs" \
  "$(us_plus "$(median hb1_p50_base)" "$(median hb1_p50_a)")" \
  "$(ratio "$(median hb1_p50_a)" "$(median hb1_p50_base)")" "$T_C1_P50"
row "start-up, spawn to /readyz 200" — "$STARTUP_MS ms" — "$T_STARTUP"
row "registry heartbeat ops per client heartbeat ($PACED_INSTANCES inst., every $PACED_INTERVAL, coalescing on)" \
  — "$OPS_PER_HB (etcd $OPS_PER_HB_ETCD, consul $OPS_PER_HB_CONSUL; breaker-skipped $OPS_PER_HB_SKIPPED); sent $PACED_RATE" — \
  "$T_OPS_PER_HEARTBEAT"
row "register p99 µs, c$CONCURRENCY, etcd frozen (healthy; breaker $BREAKER_ETCD)" \
  "$FROZEN_BEFORE" "$FROZEN_DURING" "$(ratio "$FROZEN_DURING" "$FROZEN_BEFORE")" "$T_FROZEN"
row "RSS, $RSS_INSTANCES instances heartbeating (peak)" — "$RSS_MIB MiB ($HWM_MIB MiB)" — "$T_RSS"
row "registry TLS handshakes: at start-up / during runs / after idle + burst" — \
  "$HANDSHAKES_START / $HANDSHAKES_RUNS / $HANDSHAKES_IDLE" — "$T_HANDSHAKES"
echo
echo "Machine: $(nproc) cores, $(sed -nE 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); Consul: $CONSUL_KIND."
echo "Command: $COMMAND"
if [ ${#ERRORS[@]} -gt 0 ]; then
  echo
  echo "Runs with errors:"
  printf -- '- %s\n' "${ERRORS[@]}"
fi
echo
echo "Raw results: $RESULTS (logs in $TMP/logs)"
