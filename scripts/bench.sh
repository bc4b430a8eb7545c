#!/usr/bin/env bash
# The benchmark suite behind BENCHMARKS.md: builds release binaries, then runs
# `twinreg-bench suite` (crates/twinreg-bench/src/suite/), which starts etcd and Consul (or
# mini-consul) over mutual TLS, an echo server and twinreg replicas on loopback ports of their own,
# runs every measurement with progress and an estimate of the time left on stderr, and prints the
# report on stdout.
#
#   scripts/bench.sh [--rounds N] [--duration 10s] [--quick] [--idle 10m] [--dir DIR]
#
# Sizes come from flags or the environment (INSTANCES, PACED_INSTANCES, RSS_INSTANCES, ...):
# `target/release/twinreg-bench suite --help` lists them. ETCD_BIN and CONSUL_BIN choose the
# registries' binaries; IDLE_SECONDS adds the idle gap before the last handshake count.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --release --locked --workspace --bins
exec target/release/twinreg-bench suite "$@"
