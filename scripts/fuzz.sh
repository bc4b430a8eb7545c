#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (docs/fuzzing.md) with libFuzzer for SECONDS_PER_TARGET seconds
# each (default 60; CI runs 20), and prints per target the executions, the inputs twinreg accepted
# and refused, and whether it crashed. Exits non-zero when any target crashed (or failed to run);
# the failing input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#   scripts/fuzz.sh --build-only          builds the targets and stops (CI builds them while the
#                                         test suites run, then fuzzes)
#
# The targets are built in cargo's dev profile, which fuzz/Cargo.toml sets to opt-level 1: the
# whole tree builds in about 5 minutes on two cores (release took 10) and runs about a third as
# fast as release. FUZZ_RELEASE=1 builds and runs release instead, for long runs by hand.
# FUZZ_JOBS=N runs N targets at once (default 1). FUZZ_TARGET_DIR=DIR builds into DIR instead of
# fuzz/target (CI keeps it in a cache outside the clone, so a new clone does not rebuild every
# dependency). FUZZ_TARGETS="path etcd_record" runs only those targets.
#
# Works on the stable toolchain: cargo-fuzz with `--sanitizer none` passes only stable `-C`
# flags (coverage instrumentation), and twinreg has no unsafe code for AddressSanitizer to watch.
# FUZZ_SANITIZER=address turns ASan on (stable needs RUSTC_BOOTSTRAP=1 for -Zsanitizer, set
# here).
#
# Installs what is missing, idempotently: a C++ compiler (Debian g++; libfuzzer-sys compiles
# libFuzzer) and cargo-fuzz (from crates.io). The seeds in fuzz/corpus/<target>/ are read, never
# written: what a run discovers goes to a temporary directory (FUZZ_CORPUS_OUT=DIR keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=""
if [ "${1:-}" = --build-only ]; then
  build_only=1
  secs=0
else
  secs=${1:-60}
  [[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET | --build-only]" >&2; exit 64; }
fi
jobs=${FUZZ_JOBS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_JOBS must be a positive number" >&2; exit 64; }
CARGO_FUZZ_VERSION=0.13.2
sanitizer=${FUZZ_SANITIZER:-none}
# What every cargo fuzz call gets: the sanitizer, the profile, where to build.
common=(--sanitizer "$sanitizer")
if [ -z "${FUZZ_RELEASE:-}" ]; then common+=(--dev); fi
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
  mkdir -p "$FUZZ_TARGET_DIR"
  common+=(--target-dir "$FUZZ_TARGET_DIR")
fi

if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: installing g++ (libfuzzer-sys compiles libFuzzer)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi
if [ "$sanitizer" != none ]; then
  export RUSTC_BOOTSTRAP=1
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${FUZZ_CORPUS_OUT:-$tmp/corpus}

start=$(date +%s)
echo "fuzz: building the targets (${common[*]})"
if ! cargo fuzz build "${common[@]}" >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "fuzz: the build failed" >&2
  exit 1
fi
built=$(date +%s)
if [ -n "$build_only" ]; then
  echo "fuzz: built in $((built - start))s"
  exit 0
fi

# One target: libFuzzer's run, then its line of the table in $tmp/$t.row (and what to show of
# a crash in $tmp/$t.crash).
fuzz_one() {
  local t=$1 status=0 log=$tmp/$1.log
  mkdir -p "$out/$t"
  local dirs=("$out/$t" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  local extra=()
  [ -f "fuzz/dicts/$t.dict" ] && extra+=(-dict="fuzz/dicts/$t.dict")
  # -timeout: one input taking 10 s is a hang, reported as a crash. -max_len: bodies and records
  # up to 8 KiB (larger ones only repeat what these exercise, and slow the search down).
  cargo fuzz run "${common[@]}" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -timeout=10 -max_len=8192 -rss_limit_mb=2048 \
    -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  local runs rate tally accepted refused result
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  tally=$(grep '^twinreg-fuzz tally:' "$log" | tail -1 || true)
  accepted=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' <<<"$tally")
  refused=$(sed -n 's/.*refused=\([0-9]*\).*/\1/p' <<<"$tally")
  if [ "$status" -eq 0 ] && [ -n "$runs" ]; then
    result=ok
  else
    result="CRASHED (exit $status)"
    {
      echo "---- $t: the end of libFuzzer's output ----"
      grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' "$log" | tail -40
      echo "---- reproduce: cargo fuzz run ${common[*]} $t <the file above>; keep it in fuzz/regressions/$t/ once fixed ----"
    } >"$tmp/$t.crash"
  fi
  printf '%-18s %12s %10s %10s %9s  %s\n' "$t" "${runs:--}" "${accepted:--}" "${refused:--}" "${rate:--}" "$result" >"$tmp/$t.row"
  echo "${runs:-0} ${refused:-0} $result" >"$tmp/$t.sum"
}

running=0
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=()
total_runs=0 total_refused=0
printf '%-18s %12s %10s %10s %9s  %s\n' target executions accepted refused "exec/s" result
for t in "${targets[@]}"; do
  cat "$tmp/$t.row"
  read -r runs refused result <"$tmp/$t.sum"
  if [ "$result" = ok ]; then
    total_runs=$((total_runs + runs))
    total_refused=$((total_refused + refused))
  else
    failed+=("$t")
  fi
done
for t in "${failed[@]}"; do cat "$tmp/$t.crash"; done
end=$(date +%s)
echo "fuzz: ${#targets[@]} targets x ${secs}s: $total_runs executions, $total_refused refused as bad input; build $((built - start))s, runs $((end - built))s"
# The closing line in the form CI reads ('N passed, N failed'): one per target.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]}" >&2
  exit 1
fi
