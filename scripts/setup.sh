#!/usr/bin/env bash
# Installs, from Debian, what twinreg needs on a new machine that has only the Rust toolchain, and
# proves each piece does its job before anything is built with it.
#
#   scripts/setup.sh          what building and running twinreg needs (scripts/dev.sh runs this)
#   scripts/setup.sh --test   that, plus what the test suite needs (scripts/test.sh runs this)
#
# Running twinreg:
#   protobuf-compiler, libprotobuf-dev  protoc and its well-known types (google/protobuf/*.proto):
#                                       etcd-client's build script and ours compile .proto files
#                                       that import them. Debian's protobuf-compiler only
#                                       *recommends* libprotobuf-dev, so both are named.
#   etcd-server, etcd-client            etcd (the primary registry) and etcdctl
#   curl                                the dev script waits for the servers and prints curl lines
# Testing it, in addition:
#   chromium            the status page is rendered headless and screenshotted
#   golang-go, python3  the client examples in examples/ run against a live gateway
#   prometheus          promtool checks and unit-tests the alert rules in deploy/
#   docker-compose      validates docker-compose.yml (no Docker engine is installed or needed)
#   openssl             `openssl s_client` offers protocols and suites the listener must refuse
#   g++                 libfuzzer-sys compiles libFuzzer for the fuzz targets
#   golang-etcd-server-dev  etcd's own gRPC naming resolver, built offline (GOPATH mode) by the
#                       native-discovery test (docs/discovery.md)
#   python3-consul      Debian's Consul client for the same test
#   python3-wheel       builds the Python client (clients/python) offline in its test
#   python3-venv        a virtual environment for schemathesis (from PyPI, pinned below), which
#                       fuzzes a live twinreg from docs/openapi.json
#   nodejs, npm         the TypeScript client (clients/typescript, built and run against a live
#                       gateway), and buf (@bufbuild/buf, pinned below), which lints proto/
#   golang-google-protobuf-dev, golang-google-grpc-dev
#                       the Go client's offline build, and the sources scripts/gen-go.sh builds
#                       protoc-gen-go and protoc-gen-go-grpc from (Debian's protoc-gen-go package
#                       conflicts with golang-etcd-server-dev's dependencies, so it is not used)
#
# A requirement counts as met only when its check passes: protoc compiles a file importing a
# well-known type, etcd starts and answers /health, chromium renders a page, g++ compiles, and so
# on; a binary that is merely on PATH is not enough. What fails its check is installed
# (--no-install-recommends) and checked again; what still fails is named, with its package, and
# setup exits 1. An interrupted earlier install (dpkg half-configured) is finished first, so a
# second run repairs what a first one left. Consul is not in Debian: the tests and the dev script
# use a real `consul` when one is on PATH (or CONSUL_BIN), else mini-consul from this repository.
#
# ETCD_BIN, PROTOC, CHROMIUM_BIN, GO_BIN, PYTHON3_BIN, PROMTOOL_BIN, OPENSSL_BIN point at binaries
# to use instead of Debian's; a binary named that way is checked, never installed.
set -euo pipefail

mode=run
case "${1:-}" in
  "") ;;
  --test) mode=test ;;
  *) echo "usage: $0 [--test]" >&2; exit 64 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "setup: not root and no sudo: run as root, or install sudo" >&2
    exit 1
  }
  SUDO="sudo"
fi

# === the checks: each prints what went wrong on failure ===

check_protoc() {
  local protoc=${PROTOC:-protoc}
  mkdir -p "$tmp/proto"
  cat >"$tmp/proto/check.proto" <<'PROTO'
syntax = "proto3";
package twinreg.setup;
import "google/protobuf/descriptor.proto";
import "google/protobuf/timestamp.proto";
message Check { google.protobuf.Timestamp at = 1; }
PROTO
  "$protoc" --proto_path="$tmp/proto" --descriptor_set_out="$tmp/proto/out.pb" check.proto 2>&1 \
    || { echo "'$protoc' cannot compile a file that imports google/protobuf/descriptor.proto"; return 1; }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

check_etcd() {
  local etcd=${ETCD_BIN:-etcd} client peer pid ok=""
  "$etcd" --version >/dev/null 2>&1 || { echo "'$etcd --version' failed"; return 1; }
  client=$(free_port) && peer=$(free_port)
  "$etcd" --name setup-check --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "setup-check=http://127.0.0.1:$peer" >"$tmp/etcd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$client/health" 2>/dev/null | grep -q '"health":"true"'; then
      ok=1
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -n "$ok" ] || { echo "etcd did not answer /health within 10 s:"; tail -5 "$tmp/etcd.log"; return 1; }
}

check_etcdctl() {
  local out
  out=$(etcdctl version 2>&1) || true
  grep -q '^etcdctl version' <<<"$out" || { echo "'etcdctl version' failed: $out"; return 1; }
}

check_curl() { curl --version >/dev/null 2>&1 || { echo "'curl --version' failed"; return 1; }; }

chromium_bin() {
  echo "${CHROMIUM_BIN:-$(command -v chromium || command -v chromium-browser || echo chromium)}"
}

check_chromium() {
  local out
  # The flags the tests use: no sandbox (root), and no background traffic to Google's hosts,
  # which this machine's closed network refuses.
  out=$(timeout 60 "$(chromium_bin)" --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$tmp/chromium" --dump-dom 'data:text/html,<p>rendered%20by%20chromium</p>' 2>&1) || true
  grep -q 'rendered by chromium' <<<"$out" || { echo "chromium rendered no page:"; tail -5 <<<"$out"; return 1; }
}

check_go() {
  local go=${GO_BIN:-go} v
  v=$("$go" version 2>&1) || { echo "'$go version' failed: $v"; return 1; }
  # The examples need Go >= 1.19 (Debian 12 ships 1.19).
  python3 - "$v" <<'PY' || { echo "$v: the examples need Go 1.19 or later"; return 1; }
import re, sys
m = re.search(r"go(\d+)\.(\d+)", sys.argv[1])
sys.exit(0 if m and (int(m[1]), int(m[2])) >= (1, 19) else 1)
PY
}

check_python3() {
  ${PYTHON3_BIN:-python3} -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>&1 \
    || { echo "python3 3.8 or later is needed"; return 1; }
}

check_promtool() {
  "${PROMTOOL_BIN:-promtool}" --version >/dev/null 2>&1 || { echo "'promtool --version' failed"; return 1; }
}

check_compose() {
  docker-compose version --short >/dev/null 2>&1 || { echo "'docker-compose version' failed"; return 1; }
}

check_openssl() {
  "${OPENSSL_BIN:-openssl}" version >/dev/null 2>&1 || { echo "'openssl version' failed"; return 1; }
}

# Native discovery (tests/api/discovery.rs): etcd's own gRPC resolver, built offline in GOPATH
# mode from Debian's sources, and Debian's Consul client for Debian's own python3.
check_etcd_resolver_sources() {
  [ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/resolver ] \
    || { echo "/usr/share/gocode/src/go.etcd.io/etcd/clientv3/naming/resolver is missing"; return 1; }
}

check_python_wheel() {
  /usr/bin/python3 -c 'import wheel' 2>&1 || { echo "/usr/bin/python3 cannot import wheel"; return 1; }
}

check_python_consul() {
  /usr/bin/python3 -c 'import consul' 2>&1 || { echo "/usr/bin/python3 cannot import consul"; return 1; }
}

# schemathesis, pinned, in its own virtual environment under the user's cache (kept across clones
# of the repository; tests/api/openapi.rs looks for it there).
SCHEMATHESIS_VERSION=4.32.5
schemathesis_venv() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/twinreg/schemathesis"; }

check_venv() {
  /usr/bin/python3 -m venv "$tmp/venv-check" >/dev/null 2>&1 \
    || { echo "/usr/bin/python3 -m venv cannot make a virtual environment"; return 1; }
}

check_schemathesis() {
  local v
  v=$("$(schemathesis_venv)/bin/schemathesis" --version 2>&1) || { echo "schemathesis is not installed"; return 1; }
  grep -q "$SCHEMATHESIS_VERSION" <<<"$v" || { echo "schemathesis is $v, not $SCHEMATHESIS_VERSION"; return 1; }
}

check_node() {
  "${NODE_BIN:-node}" -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' 2>&1 \
    || { echo "node 18 or later is needed"; return 1; }
  "${NPM_BIN:-npm}" --version >/dev/null 2>&1 || { echo "'npm --version' failed"; return 1; }
}

check_go_grpc() {
  [ -d /usr/share/gocode/src/google.golang.org/grpc/cmd/protoc-gen-go-grpc ] \
    && [ -d /usr/share/gocode/src/google.golang.org/protobuf/cmd/protoc-gen-go ] \
    || { echo "grpc-go or protobuf-go sources are missing under /usr/share/gocode"; return 1; }
}

# buf, pinned, from npm, under the user's cache (tests/proto.rs looks for it there).
BUF_VERSION=1.75.0
buf_dir() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/twinreg/buf"; }

check_buf() {
  local v
  v=$("$(buf_dir)/node_modules/.bin/buf" --version 2>&1) || { echo "buf is not installed"; return 1; }
  [ "$v" = "$BUF_VERSION" ] || { echo "buf is $v, not $BUF_VERSION"; return 1; }
}

check_cxx() {
  printf '#include <vector>\nint main() { std::vector<int> v{1}; return v.size() - 1; }\n' >"$tmp/check.cc"
  c++ -o "$tmp/check" "$tmp/check.cc" 2>&1 && "$tmp/check" || { echo "c++ cannot build a program"; return 1; }
}

# === what each mode needs: check, Debian packages, and the variable that overrides the binary ===

requirements=(
  "curl|check_curl|curl|"
  "protoc+well-known types|check_protoc|protobuf-compiler libprotobuf-dev|PROTOC"
  "etcd|check_etcd|etcd-server|ETCD_BIN"
  "etcdctl|check_etcdctl|etcd-client|"
)
if [ "$mode" = test ]; then
  requirements+=(
    "chromium|check_chromium|chromium|CHROMIUM_BIN"
    "go|check_go|golang-go|GO_BIN"
    "python3|check_python3|python3|PYTHON3_BIN"
    "promtool|check_promtool|prometheus|PROMTOOL_BIN"
    "docker-compose|check_compose|docker-compose|"
    "openssl|check_openssl|openssl|OPENSSL_BIN"
    "c++|check_cxx|g++|"
    "etcd resolver sources|check_etcd_resolver_sources|golang-etcd-server-dev|"
    "python3-consul|check_python_consul|python3-consul|"
    "python3-venv|check_venv|python3-venv|"
    "python3-wheel|check_python_wheel|python3-wheel|"
    "node+npm|check_node|nodejs npm|NODE_BIN"
    "Go gRPC sources|check_go_grpc|golang-google-protobuf-dev golang-google-grpc-dev|"
  )
fi

# python3 finds free ports for the etcd check; a new machine has it.
command -v python3 >/dev/null 2>&1 || requirements=("python3|check_python3|python3|" "${requirements[@]}")

failing=() packages=()
for r in "${requirements[@]}"; do
  IFS='|' read -r name check pkgs var <<<"$r"
  if ! "$check" >"$tmp/why" 2>&1; then
    if [ -n "$var" ] && [ -n "${!var:-}" ]; then
      echo "setup: $name from $var=${!var} does not work: $(cat "$tmp/why")" >&2
      echo "setup: fix $var, or unset it to use Debian's $pkgs" >&2
      exit 1
    fi
    failing+=("$r")
    read -r -a p <<<"$pkgs"
    packages+=("${p[@]}")
  fi
done

if [ ${#packages[@]} -gt 0 ]; then
  echo "setup: installing ${packages[*]}"
  # Finish an install an earlier run left half-done, so this one starts from a consistent state.
  if [ -n "$($SUDO dpkg --audit 2>/dev/null)" ]; then
    echo "setup: finishing an interrupted package install first"
    $SUDO dpkg --configure -a
  fi
  $SUDO apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$tmp/apt.log" 2>&1; then
    # A broken dependency state left by an earlier interrupted run: let apt repair it, then retry.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -f >>"$tmp/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$tmp/apt.log" 2>&1 || {
      tail -20 "$tmp/apt.log" >&2
      echo "setup: 'apt-get install ${packages[*]}' failed (above); fix apt and run $0 again" >&2
      exit 1
    }
  fi
  # Debian's etcd-server and prometheus packages start system services; the tests and the dev
  # script run their own on other ports, so stop those to keep the machine quiet.
  if command -v systemctl >/dev/null 2>&1; then
    for unit in etcd prometheus; do
      systemctl is-active --quiet "$unit" 2>/dev/null && $SUDO systemctl stop "$unit" || true
    done
  fi
  for r in "${failing[@]}"; do
    IFS='|' read -r name check pkgs var <<<"$r"
    if ! "$check" >"$tmp/why" 2>&1; then
      cat "$tmp/why" >&2
      echo "setup: $name still does not work after installing Debian's $pkgs (above); check 'apt-cache policy $pkgs'" >&2
      exit 1
    fi
  done
fi

if [ "$mode" = test ] && ! check_schemathesis >/dev/null 2>&1; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $(schemathesis_venv)"
  rm -rf "$(schemathesis_venv)"
  /usr/bin/python3 -m venv "$(schemathesis_venv)"
  "$(schemathesis_venv)/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >"$tmp/pip.log" 2>&1 || {
    tail -20 "$tmp/pip.log" >&2
    echo "setup: 'pip install schemathesis==$SCHEMATHESIS_VERSION' failed (above): PyPI must be reachable" >&2
    exit 1
  }
  check_schemathesis >&2 || { echo "setup: schemathesis does not run after installing it" >&2; exit 1; }
fi

if [ "$mode" = test ] && ! check_buf >/dev/null 2>&1; then
  echo "setup: installing buf $BUF_VERSION from npm into $(buf_dir)"
  rm -rf "$(buf_dir)"
  npm install --prefix "$(buf_dir)" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION" >"$tmp/npm.log" 2>&1 || {
    tail -20 "$tmp/npm.log" >&2
    echo "setup: 'npm install @bufbuild/buf@$BUF_VERSION' failed (above): the npm registry must be reachable" >&2
    exit 1
  }
  check_buf >&2 || { echo "setup: buf does not run after installing it" >&2; exit 1; }
fi

versions="etcd $("${ETCD_BIN:-etcd}" --version 2>/dev/null | awk 'NR==1{print $3}'), protoc $("${PROTOC:-protoc}" --version | awk '{print $2}')"
if [ "$mode" = test ]; then
  versions+=", schemathesis $SCHEMATHESIS_VERSION, buf $BUF_VERSION, $("${GO_BIN:-go}" version | awk '{print $3}'), $(${PYTHON3_BIN:-python3} --version 2>&1), $("$(chromium_bin)" --version 2>/dev/null), docker-compose $(docker-compose version --short 2>/dev/null)"
fi
echo "setup ($mode): ok: $versions"
