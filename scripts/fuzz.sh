#!/usr/bin/env bash
# Fuzzes the reference parser, manifest/index/config parsing and layer
# extraction with cargo fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   replays the kept corpus and the
#                                           regressions, then fuzzes each
#                                           target SECONDS (default
#                                           $LSTORE_FUZZ_SECONDS, else 60;
#                                           0: replay only)
#   scripts/fuzz.sh --replay [TARGET...]    the replay only
#
# Targets: reference document unpack. scripts/test.sh runs it after
# `cargo test` (which builds the RocksDB library this build links).
# Needs cargo-fuzz (scripts/setup.sh installs it) and a compiler that
# accepts -Z flags: nightly, or stable with RUSTC_BOOTSTRAP=1 (set here).
# New inputs go to a scratch corpus; fuzz/corpus/<target>/ stays small. A
# crash is copied to fuzz/artifacts/<target>/ and the script fails.
#
# Prints one line per check ("fuzz: replay reference: 24 inputs, ok",
# "fuzz: unpack: 81234 inputs in 60s, cov: 2345, ok") and last
# "fuzz: N passed, M failed". Exit status 0 when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
main_target="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
unset CARGO_TARGET_DIR
# Its own target dir (sanitizer flags change every crate's build), kept
# outside the clone between runs.
fuzz_target_dir="${LSTORE_FUZZ_TARGET_DIR:-/var/cache/lstore/fuzz-target}"
export RUSTC_BOOTSTRAP=1
all_targets=(reference document unpack)

replay_only=0
if [ "${1:-}" = "--replay" ]; then
  replay_only=1
  shift
  seconds=0
else
  seconds="${1:-${LSTORE_FUZZ_SECONDS:-60}}"
  shift || true
fi
case "$seconds" in *[!0-9]*|'') echo "usage: $0 [SECONDS|--replay] [TARGET...]" >&2; exit 2;; esac
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  case " ${all_targets[*]} " in *" $target "*) ;; *) echo "fuzz: no target $target" >&2; exit 2;; esac
done

command -v cargo-fuzz >/dev/null || {
  echo "fuzz: cargo-fuzz is missing (scripts/setup.sh installs it)" >&2
  exit 1
}

# Link the RocksDB the main build already compiled instead of compiling it
# again (15 minutes) with these flags: the fuzzed code never reaches it.
lib=$(ls -t "$main_target"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
if [ -n "$lib" ]; then
  export ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1
else
  echo "fuzz: no prebuilt librocksdb.a under $main_target (run cargo build first);" \
       "RocksDB will be compiled for the fuzz build" >&2
fi

cd fuzz
# The committed fuzz/Cargo.lock, as CI must build it (cargo fuzz has no
# --locked of its own).
if ! cargo fetch --locked -q; then
  echo "fuzz: fuzz/Cargo.lock does not match the manifests (a dependency of" \
       "store/ changed?): run 'cd fuzz && cargo update -p lstore' and commit it" >&2
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi

scratch=$(mktemp -d /tmp/lstore-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0

# Shows the end of a failed run's log without the long stack listings.
show_failure() {
  grep -v '^ *#[0-9]* 0x\|^ *[0-9]*: \|^ *at ' "$1" | tail -40 >&2 || true
}

# Builds all the targets once, so that build time is not fuzzing time.
echo "fuzz: building ${targets[*]} (target dir $fuzz_target_dir)"
build_start=$SECONDS
if ! cargo fuzz build --target-dir "$fuzz_target_dir" >"$scratch/build.log" 2>&1; then
  tail -40 "$scratch/build.log" >&2
  echo "fuzz: the fuzz build FAILED"
  echo "fuzz: 0 passed, 1 failed"
  exit 1
fi
echo "fuzz: built in $((SECONDS - build_start))s"

# The kept corpus and the inputs that once crashed a target, each run once.
for target in "${targets[@]}"; do
  dirs=("corpus/$target")
  [ -d "regressions/$target" ] && dirs+=("regressions/$target")
  inputs=$(find "${dirs[@]}" -type f | wc -l)
  log="$scratch/replay-$target.log"
  if cargo fuzz run --target-dir "$fuzz_target_dir" "$target" "${dirs[@]}" -- \
       -runs=0 -timeout=20 -artifact_prefix="$scratch/" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "fuzz: replay $target: $inputs inputs, ok"
  else
    failed=$((failed + 1))
    show_failure "$log"
    echo "fuzz: replay $target: $inputs inputs, FAILED"
  fi
done

if [ "$replay_only" = 0 ] && [ "$seconds" -gt 0 ]; then
  for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "artifacts/$target"
    max_len=4096; [ "$target" = unpack ] && max_len=65536
    log="$scratch/$target.log"
    if cargo fuzz run --target-dir "$fuzz_target_dir" "$target" \
         "$scratch/$target" "corpus/$target" -- \
         -max_total_time="$seconds" -max_len="$max_len" -timeout=20 \
         -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
         >"$log" 2>&1; then
      verdict=ok
      passed=$((passed + 1))
    else
      verdict=FAILED
      failed=$((failed + 1))
      show_failure "$log"
      if [ -n "$(ls -A "artifacts/$target")" ]; then
        echo "fuzz: $target: the crashing input is in fuzz/artifacts/$target/" >&2
      fi
    fi
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
    found=$(find "$scratch/$target" -type f | wc -l)
    echo "fuzz: $target: $runs inputs in ${seconds}s, ${cov:-cov: ?}, $found new corpus entries, $verdict"
  done
fi
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
