#!/usr/bin/env bash
# Generates the Go stubs of proto/twinreg/v1/registry.proto into clients/go/twinregv1 with
# protoc-gen-go (google.golang.org/protobuf) and protoc-gen-go-grpc, built offline (GOPATH mode)
# from the sources of Debian's golang-google-protobuf-dev and golang-google-grpc-dev
# (scripts/setup.sh --test installs them; Debian's own protoc-gen-go package conflicts with
# golang-etcd-server-dev's dependencies, so it is not used).
#
#   scripts/gen-go.sh           write them
#   scripts/gen-go.sh --check   exit 1 (with the diff) when the committed ones differ
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for plugin in google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc; do
  GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 \
    GOCACHE="${GOCACHE:-$PWD/target/go-cache}" "${GO_BIN:-go}" build -o "$out/bin/${plugin##*/}" "$plugin"
done
PATH="$out/bin:$PATH" "${PROTOC:-protoc}" -I proto \
  --go_out="$out" --go_opt=module=twinreg.dev/go \
  --go-grpc_out="$out" --go-grpc_opt=module=twinreg.dev/go \
  twinreg/v1/registry.proto
if [ "${1:-}" = --check ]; then
  diff -ru clients/go/twinregv1 "$out/twinregv1" || {
    echo "gen-go: clients/go/twinregv1 is not what proto/ gives: run scripts/gen-go.sh and commit" >&2
    exit 1
  }
else
  rm -rf clients/go/twinregv1
  cp -r "$out/twinregv1" clients/go/twinregv1
fi
