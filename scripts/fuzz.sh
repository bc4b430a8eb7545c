#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (docs/fuzzing.md) with libFuzzer for SECONDS_PER_TARGET seconds
# each (default 60; CI runs 20), one after the other, and prints per target the executions, the
# inputs twinreg accepted and refused, and whether it crashed. Exits non-zero when any target
# crashed (or failed to run); the failing input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Works on the stable toolchain: cargo-fuzz with `--sanitizer none` passes only stable `-C`
# flags (coverage instrumentation), and twinreg has no unsafe code for AddressSanitizer to watch.
# FUZZ_SANITIZER=address turns ASan on (stable needs RUSTC_BOOTSTRAP=1 for -Zsanitizer, set
# here). FUZZ_TARGETS="path etcd_record" runs only those targets.
#
# Installs what is missing, idempotently: a C++ compiler (Debian g++; libfuzzer-sys compiles
# libFuzzer) and cargo-fuzz (from crates.io). The seeds in fuzz/corpus/<target>/ are read, never
# written: what a run discovers goes to a temporary directory (FUZZ_CORPUS_OUT=DIR keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 64; }
CARGO_FUZZ_VERSION=0.13.2
sanitizer=${FUZZ_SANITIZER:-none}

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
echo "fuzz: building the targets (sanitizer: $sanitizer)"
if ! cargo fuzz build --sanitizer "$sanitizer" >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  echo "fuzz: the build failed" >&2
  exit 1
fi
built=$(date +%s)

failed=()
total_runs=0 total_refused=0
printf '%-18s %12s %10s %10s %9s  %s\n' target executions accepted refused "exec/s" result
for t in "${targets[@]}"; do
  mkdir -p "$out/$t"
  dirs=("$out/$t" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  extra=()
  [ -f "fuzz/dicts/$t.dict" ] && extra+=(-dict="fuzz/dicts/$t.dict")
  log=$tmp/$t.log
  status=0
  # -timeout: one input taking 10 s is a hang, reported as a crash. -max_len: bodies and records
  # up to 8 KiB (larger ones only repeat what these exercise, and slow the search down).
  cargo fuzz run --sanitizer "$sanitizer" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -timeout=10 -max_len=8192 -rss_limit_mb=2048 \
    -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  tally=$(grep '^twinreg-fuzz tally:' "$log" | tail -1 || true)
  accepted=$(sed -n 's/.*accepted=\([0-9]*\).*/\1/p' <<<"$tally")
  refused=$(sed -n 's/.*refused=\([0-9]*\).*/\1/p' <<<"$tally")
  if [ "$status" -eq 0 ] && [ -n "$runs" ]; then
    result=ok
    total_runs=$((total_runs + runs))
    total_refused=$((total_refused + ${refused:-0}))
  else
    result="CRASHED (exit $status)"
    failed+=("$t")
  fi
  printf '%-18s %12s %10s %10s %9s  %s\n' "$t" "${runs:--}" "${accepted:--}" "${refused:--}" "${rate:--}" "$result"
  if [ "$result" != ok ]; then
    echo "---- $t: the end of libFuzzer's output ----"
    grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' "$log" | tail -40
    echo "---- reproduce: cargo fuzz run --sanitizer $sanitizer $t <the file above>; keep it in fuzz/regressions/$t/ once fixed ----"
  fi
done
end=$(date +%s)
echo "fuzz: ${#targets[@]} targets x ${secs}s: $total_runs executions, $total_refused refused as bad input; build $((built - start))s, runs $((end - built))s"
# The closing line in the form CI reads ('N passed, N failed'): one per target.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]}" >&2
  exit 1
fi
