#!/usr/bin/env bash
# Runs every fuzz target (fuzz/src/lib.rs), or those in $FUZZ_TARGETS, for
# SECONDS each (default 60).
# With a nightly toolchain: libFuzzer through cargo fuzz (installed from
# crates.io if missing), coverage-guided, from the committed seeds in
# fuzz/corpus/<target>/ (new inputs go to .run/fuzz-corpus/, never into the
# committed seeds). Without one: the same targets as bounded property tests
# on stable (fuzz/tests/bounded.rs), so a machine without nightly still runs
# them. A finding is saved under fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
targets=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^oidc-edge-fuzz$')}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "==> no nightly toolchain: the fuzz targets as bounded property tests (${seconds}s each)"
  OIDC_EDGE_FUZZ_SECONDS=$seconds cargo test -q --profile fuzz -p oidc-edge-fuzz -- --nocapture
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-fuzz"
  cargo install -q cargo-fuzz --locked
fi
echo "==> libFuzzer (cargo +nightly fuzz), ${seconds}s per target"
# Eleven binaries with the release profile's whole-program LTO take minutes
# to link; coverage-guided fuzzing does not need it.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
cargo +nightly fuzz build -s none --features libfuzzer >/dev/null
for t in $targets; do
  work=.run/fuzz-corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=.run/fuzz-$t.log
  if ! cargo +nightly fuzz run -s none --features libfuzzer "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t found a failure: input in fuzz/artifacts/$t/ (log $log)" >&2
    exit 1
  fi
  printf '%20s: %s runs in %ss, no finding\n' "$t" "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)" "$seconds"
done
