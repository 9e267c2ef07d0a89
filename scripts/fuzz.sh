#!/usr/bin/env bash
# Fuzzes the reference parser, manifest/index/config parsing and layer
# extraction with cargo fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target SECONDS (default 60);
#                                           targets: reference document unpack
#   scripts/fuzz.sh --replay                the kept corpus and regressions
#                                           through the targets, no fuzzing
#
# Not part of `cargo test` at the top (CI time). Needs cargo-fuzz
# (`cargo install cargo-fuzz`) and a compiler that accepts -Z flags: nightly,
# or stable with RUSTC_BOOTSTRAP=1 (set here). New inputs go to a scratch
# corpus; fuzz/corpus/<target>/ stays small. A crash is copied to
# fuzz/artifacts/<target>/ and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
main_target="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
unset CARGO_TARGET_DIR
# Its own target dir (sanitizer flags change every crate's build), kept
# outside the clone between runs.
fuzz_target_dir="${LSTORE_FUZZ_TARGET_DIR:-/var/cache/lstore/fuzz-target}"
export RUSTC_BOOTSTRAP=1

# Link the RocksDB the main build already compiled instead of compiling it
# again (15 minutes) with these flags: the fuzzed code never reaches it.
lib=$(ls -t "$main_target"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
if [ -n "$lib" ]; then
  export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
else
  echo "fuzz: no prebuilt librocksdb.a under $main_target (run cargo build first);" \
       "RocksDB will be compiled for the fuzz build" >&2
fi

if [ "${1:-}" = "--replay" ]; then
  cd fuzz
  if ! command -v cargo-fuzz >/dev/null; then
    # Without cargo-fuzz: the same checks as plain test binaries.
    exec cargo test --target-dir "$fuzz_target_dir" --release -q
  fi
  for target in reference document unpack; do
    dirs=("corpus/$target")
    [ -d "regressions/$target" ] && dirs+=("regressions/$target")
    cargo fuzz run --target-dir "$fuzz_target_dir" "$target" "${dirs[@]}" -- -runs=0 2>&1 |
      grep -E 'INITED|Done|ERROR|panicked' || true
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz: replay of $target FAILED" >&2; exit 1; }
  done
  exit 0
fi

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(reference document unpack)
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo install cargo-fuzz" >&2; exit 1; }

scratch=$(mktemp -d /tmp/lstore-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  max_len=4096; [ "$target" = unpack ] && max_len=65536
  echo "fuzz: $target for ${seconds}s"
  if ! (cd fuzz && cargo fuzz run --target-dir "$fuzz_target_dir" "$target" \
        "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=20 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1) \
        >"$scratch/$target.log" 2>&1; then
    status=1
    grep -v '^ *[0-9]*: \|^ *at ' "$scratch/$target.log" | tail -40 >&2
    if [ -n "$(ls -A "fuzz/artifacts/$target")" ]; then
      echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    else
      echo "fuzz: $target FAILED to build or run" >&2
    fi
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$scratch/$target.log" | grep -Eo '[0-9]+$' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' "$scratch/$target.log" | tail -1 || true)
  found=$(ls "$scratch/$target" | wc -l)
  echo "fuzz: $target: $runs inputs in ${seconds}s, $cov, $found new corpus entries"
done
exit "$status"
