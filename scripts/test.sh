#!/usr/bin/env bash
# The whole test suite, on a new machine: installs what is missing (scripts/setup.sh --test),
# validates docker-compose.yml, checks formatting and lints, checks dependencies with cargo deny
# (licenses, advisories, duplicate versions, sources; deny.toml), builds every test, then runs the test
# suites side by side (each finds its own free loopback ports), then fuzzes each target for 20 s;
# the fuzz targets build in the background from the start. Prints each suite's output whole once it has finished, and how long
# each step took.
#
# TEST_THREADS (default 8): tests run at once inside one suite. The end-to-end tests mostly wait
# on servers and timers, so more than the core count keeps the cores busy.
# FUZZ_TARGET_DIR (default ~/.cache/twinreg/fuzz-target): where the fuzz targets build, kept
# between runs so a new clone does not rebuild every instrumented dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
timing=()
lap() { # name: records the time since the previous lap
  local now
  now=$(date +%s)
  timing+=("$(printf '%-34s %5ss' "$1" $((now - ${last:-$t0})))")
  last=$now
}

scripts/setup.sh --test
rustup component add rustfmt clippy >/dev/null 2>&1 || true
lap "setup"

logs=target/test-logs
rm -rf "$logs"
mkdir -p "$logs"
# The fuzz build runs beside everything below, in its own target directory: the lints and the
# test build leave a core idle in their serial stretches, and the suites mostly wait on servers.
export FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/twinreg/fuzz-target}
setsid scripts/fuzz.sh --build-only >"$logs/fuzz-build.log" 2>&1 &
fuzz_build=$!
# cargo-deny (licenses, advisories, duplicate versions, sources: deny.toml), installed beside it
# when missing.
CARGO_DENY_VERSION=0.20.2
deny_install=""
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  setsid cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet >"$logs/deny-install.log" 2>&1 &
  deny_install=$!
fi
# Their own process groups: whatever ends this script early ends them with it.
trap 'kill -- -"$fuzz_build" 2>/dev/null || true; [ -z "$deny_install" ] || kill -- -"$deny_install" 2>/dev/null || true' EXIT

# The compose file: schema, interpolation and references, without a Docker engine. Its paths, host
# names and ports are checked against the repository by tests/compose.rs.
docker-compose -f docker-compose.yml config -q
echo "docker-compose.yml: valid"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
lap "compose, fmt, clippy"

if [ -n "$deny_install" ] && ! wait "$deny_install"; then
  cat "$logs/deny-install.log" >&2
  echo "test: installing cargo-deny $CARGO_DENY_VERSION failed" >&2
  exit 1
fi
# cargo deny reads the whole graph, every platform's crates included: fetch them first (the build
# above fetched only this platform's).
cargo fetch --locked >/dev/null
cargo deny --offline check licenses bans sources
# Advisories need the RustSec database, a git repository on github.com: fetched when that is
# reachable, else the copy already on this machine is used. Without either it cannot be checked,
# and this says so loudly rather than passing in silence.
cargo deny fetch >/dev/null 2>&1 || true
if ls "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-*/crates >/dev/null 2>&1; then
  cargo deny --offline check advisories
else
  echo "test: ADVISORIES NOT CHECKED: the RustSec advisory database could not be fetched from" \
    "github.com and there is no copy under ${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/; run" \
    "\`cargo deny fetch\` where github.com is reachable" >&2
fi
lap "cargo deny"

cargo test --workspace --all-targets --locked --no-run
# What the tests build for themselves (testkit::binaries: `cargo build -p NAME --bin NAME`, whose
# features differ from the workspace's), built now, so no suite compiles while others run.
cargo build --locked --quiet -p twinreg --bin twinreg
cargo build --locked --quiet -p mini-consul --bin mini-consul
lap "build the tests"

# The suites: every test binary of the workspace, the slow end-to-end ones each on its own, the
# quick ones of a package together, run straight from the binaries built above (a `cargo test -p`
# per suite would build again with that package's own features, all suites at once, and starve
# the registries the first tests start). Listed from cargo's own build report, so a new test file
# cannot be left out.
threads=${TEST_THREADS:-8}
mapfile -t suites < <(cargo test --workspace --all-targets --locked --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
slow = {"api", "mini_consul", "chaos", "dev_script"}
groups = {}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    name = m["target"]["name"]
    pkg = os.path.dirname(m["manifest_path"])
    suite = name if m["target"]["kind"][0] == "test" and name in slow else os.path.basename(pkg) if pkg != os.getcwd() else "twinreg"
    groups.setdefault(suite, (pkg, []))[1].append(m["executable"])
for suite, (pkg, exes) in sorted(groups.items()):
    print(suite + "\t" + pkg + "\t" + " ".join(exes))
')
CARGO=$(command -v cargo)
export CARGO
pids=()
for s in "${suites[@]}"; do
  IFS=$'\t' read -r name dir exes <<<"$s"
  (
    cd "$dir"
    rc=0
    for exe in $exes; do
      echo "     Running $exe"
      "$exe" --test-threads="$threads" || rc=1
    done
    exit $rc
  ) >"$logs/$name.log" 2>&1 &
  pids+=("$!:$name")
done
failed=()
for p in "${pids[@]}"; do
  pid=${p%%:*} name=${p#*:}
  if wait "$pid"; then status=ok; else status=FAILED; failed+=("$name"); fi
  echo "==== suite $name: $status ===="
  cat "$logs/$name.log"
done
lap "run the suites (in parallel)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "test: suites failed: ${failed[*]} (logs in $logs/)" >&2
  exit 1
fi

if ! wait "$fuzz_build"; then
  cat "$logs/fuzz-build.log" >&2
  echo "test: the fuzz build failed" >&2
  exit 1
fi
cat "$logs/fuzz-build.log"
lap "wait for the fuzz build"

# A bounded libFuzzer run of every fuzz target (docs/fuzzing.md): 20 s each, two at a time, keeps
# CI short; the script's default, for runs by hand, is 60 s. Their seeds and past failures already
# ran above, in tests/fuzz_regressions.rs.
FUZZ_JOBS=2 scripts/fuzz.sh 20
lap "fuzz"

echo "test: all passed in $(($(date +%s) - t0))s"
printf '  %s\n' "${timing[@]}"
