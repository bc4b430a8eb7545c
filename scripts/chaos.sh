#!/usr/bin/env bash
# A chaos run against real servers on loopback: N simulated instances register, heartbeat and now
# and then deregister through twinreg while etcd and Consul are killed, frozen, wiped and
# restarted at random for M minutes. Prints lost registrations, zombies and the worst register
# latency; fails if anything was lost or left behind. Bounded in time and count.
#
#   scripts/chaos.sh [INSTANCES] [MINUTES] [SEED]     (defaults: 100 instances, 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
export CHAOS_INSTANCES="${1:-100}"
export CHAOS_SECONDS="$(( ${2:-3} * 60 ))"
[ -n "${3:-}" ] && export CHAOS_SEED="$3"
cargo test --release --locked --test chaos -- --nocapture 2>&1 | grep -E '^chaos|test result|panicked'
