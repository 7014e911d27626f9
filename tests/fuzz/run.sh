#!/usr/bin/env bash
# Runs every cargo-fuzz target in tests/fuzz for a bounded time each, starting from the seed
# corpus kept in tests/fuzz/corpus/<target>/. Any crash, panic, leak or timeout fails the script
# (libFuzzer exits non-zero and leaves the input in tests/fuzz/artifacts/<target>/).
# Knobs: FUZZ_SECONDS (per target, default 20), FUZZ_TARGETS (default: every target),
# FUZZ_JOBS (targets fuzzed at once, default: the number of cores; libFuzzer uses one core a
# process, so on the 2-core CI machine two at once halve the stage). Each target logs on its own;
# the per-target lines and any failure's report are printed in target order once all have run.
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz from
# crates.io when it is missing. New corpus entries libFuzzer finds go to a scratch directory,
# so the seed corpus in the repo stays small; add an input there by hand when it is worth keeping.
set -euo pipefail
cd "$(dirname "$0")/../.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
[[ $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: FUZZ_SECONDS must be a positive integer (got '$FUZZ_SECONDS')" >&2; exit 2; }
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc)}
[[ $FUZZ_JOBS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: FUZZ_JOBS must be a positive integer (got '$FUZZ_JOBS')" >&2; exit 2; }
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
  [[ -d tests/fuzz/corpus/$t ]] || { echo "fuzz: no seed corpus tests/fuzz/corpus/$t" >&2; exit 1; }
done

# Fuzzes one target, its output in $scratch/$t.log and libFuzzer's exit code in $scratch/$t.rc.
fuzz_one() {
  local t=$1
  mkdir -p "$scratch/$t"
  # The scratch directory comes first: libFuzzer writes new inputs to the first corpus only.
  if "${fuzz[@]}" run --fuzz-dir tests/fuzz "$t" "$scratch/$t" "tests/fuzz/corpus/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1; then
    echo 0 >"$scratch/$t.rc"
  else
    echo $? >"$scratch/$t.rc"
  fi
}

echo "fuzz: $(wc -w <<<"$targets") targets for ${FUZZ_SECONDS}s each, $FUZZ_JOBS at a time"
running=0
for t in $targets; do
  if ((running >= FUZZ_JOBS)); then
    wait -n
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=()
for t in $targets; do
  echo "== fuzz $t for ${FUZZ_SECONDS}s"
  if [[ $(<"$scratch/$t.rc") != 0 ]]; then
    # The panic message comes before a long backtrace: print it on its own, then the end.
    grep -m1 -A2 -E "panicked at|^==[0-9]+==ERROR" "$scratch/$t.log" >&2 || true
    tail -40 "$scratch/$t.log" >&2
    echo "fuzz: $t FAILED; the input is in tests/fuzz/artifacts/$t/" >&2
    failed+=("$t")
    continue
  fi
  grep -E '^stat::number_of_executed_units|^Done ' "$scratch/$t.log" | tr '\n' ' '; echo
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: every target passed in $(( $(date +%s) - start ))s"
