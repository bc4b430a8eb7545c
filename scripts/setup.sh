#!/usr/bin/env bash
# Installs what building and testing twinreg needs on a fresh Debian machine with only the Rust
# toolchain: protoc (etcd-client's build), etcd (the tests' real primary registry), curl, Go
# and Python 3 (the tests run the client examples in examples/ against a live gateway), and
# promtool (Debian prometheus; checks the alert rules in deploy/), Chromium (the tests render the
# admin status page headless and save a screenshot; Debian's `chromium` without recommends runs
# headless fine), docker-compose (scripts/test.sh validates docker-compose.yml with it; no
# Docker engine needed, and none is installed: --no-install-recommends leaves out docker.io), and
# the openssl command (tests/api/tls_policy.rs probes the listener's protocols and suites with
# `openssl s_client`), and g++ (libFuzzer, for scripts/fuzz.sh; cargo-fuzz itself comes from
# crates.io, installed by that script).
# Idempotent: installs only what is missing. Consul cannot be installed from Debian; the tests and
# the dev script use a real `consul` when one is on PATH (or CONSUL_BIN), else mini-consul.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
# promtool checks the shipped alert rules (tests/api/deploy.rs).
command -v promtool >/dev/null 2>&1 || [ -n "${PROMTOOL_BIN:-}" ] || need+=(prometheus)
command -v go >/dev/null 2>&1 || [ -n "${GO_BIN:-}" ] || need+=(golang-go)
command -v python3 >/dev/null 2>&1 || [ -n "${PYTHON3_BIN:-}" ] || need+=(python3)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# openssl s_client offers old protocols and suites the listener must refuse (tests/api/tls_policy.rs).
command -v openssl >/dev/null 2>&1 || [ -n "${OPENSSL_BIN:-}" ] || need+=(openssl)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || [ -n "${CHROMIUM_BIN:-}" ] || need+=(chromium)
# A C++ compiler: libfuzzer-sys compiles libFuzzer for the fuzz targets (scripts/fuzz.sh).
command -v c++ >/dev/null 2>&1 || need+=(g++)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Debian's etcd-server package starts a system etcd on 2379; the tests and the dev script use
# their own ports, so it is harmless, but stop it to keep the machine quiet.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
# Debian's golang-go puts `go` in /usr/bin; make sure it runs (the examples need Go >= 1.19).
GO=${GO_BIN:-go}
if ! go_version=$("$GO" version 2>/dev/null); then
  echo "setup: '$GO version' failed after installing golang-go" >&2
  exit 1
fi
PYTHON3=${PYTHON3_BIN:-python3}
CHROMIUM=${CHROMIUM_BIN:-$(command -v chromium || command -v chromium-browser || echo chromium)}
if ! chromium_version=$("$CHROMIUM" --version 2>/dev/null); then
  echo "setup: '$CHROMIUM --version' failed after installing chromium" >&2
  exit 1
fi
echo "setup: etcd $(etcd --version 2>/dev/null | head -1 | awk '{print $3}'), protoc $(protoc --version | awk '{print $2}'), $(echo "$go_version" | awk '{print $3}'), $("$PYTHON3" --version 2>&1), $chromium_version, docker-compose $(docker-compose version --short 2>/dev/null)"
