#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for a bounded time each, starting from the seed
# corpus kept in tests/fuzz/corpus/<target>/. Any crash, panic, leak or timeout fails the script
# (libFuzzer exits non-zero and leaves the input in tests/fuzz/artifacts/<target>/).
# Knobs: FUZZ_SECONDS (per target, default 20), FUZZ_TARGETS (default: every target).
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz from
# crates.io when it is missing. New corpus entries libFuzzer finds go to a scratch directory,
# so the seed corpus in the repo stays small; add an input there by hand when it is worth keeping.
set -euo pipefail
cd "$(dirname "$0")/../.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
[[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: FUZZ_SECONDS must be a positive integer (got '$FUZZ_SECONDS')" >&2; exit 2; }
cargo +nightly --version >/dev/null 2>&1 || { echo "run.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

fuzz=(cargo +nightly fuzz)
targets=${FUZZ_TARGETS:-$("${fuzz[@]}" list --fuzz-dir tests/fuzz)}
start=$(date +%s)
"${fuzz[@]}" build --fuzz-dir tests/fuzz
echo "fuzz: built in $(( $(date +%s) - start ))s"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ragscope-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  seeds=tests/fuzz/corpus/$t
  [[ -d $seeds ]] || { echo "fuzz: no seed corpus $seeds" >&2; exit 1; }
  mkdir -p "$scratch/$t"
  echo "== fuzz $t for ${FUZZ_SECONDS}s"
  # The scratch directory comes first: libFuzzer writes new inputs to the first corpus only.
  if ! "${fuzz[@]}" run --fuzz-dir tests/fuzz "$t" "$scratch/$t" "$seeds" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1; then
    # The panic message comes before a long backtrace: print it on its own, then the end.
    grep -m1 -A2 -E "panicked at|^==[0-9]+==ERROR" "$scratch/$t.log" >&2 || true
    tail -40 "$scratch/$t.log" >&2
    echo "fuzz: $t FAILED; the input is in tests/fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done ' "$scratch/$t.log" | tr '\n' ' '; echo
done
echo "fuzz: every target passed in $(( $(date +%s) - start ))s"
