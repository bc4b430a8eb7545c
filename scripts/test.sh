#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing, checks formatting and
# lints, then runs every test against real servers (etcd; Consul or mini-consul).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
