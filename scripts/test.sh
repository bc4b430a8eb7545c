#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing, validates
# docker-compose.yml, checks formatting and lints, then runs every test against real servers
# (etcd; Consul or mini-consul), then fuzzes each fuzz target for 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The compose file: schema, interpolation and references, without a Docker engine. Its paths, host
# names and ports are checked against the repository by tests/compose.rs.
docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml: valid"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# A bounded libFuzzer run of every fuzz target (docs/fuzzing.md): 20 s each keeps CI short; the
# script's default, for runs by hand, is 60 s. Their seeds and past failures already ran above,
# in tests/fuzz_regressions.rs.
scripts/fuzz.sh 20
