#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against the real binary,
# docker-registry, skopeo, umoci, podman, containerd (ctr, runc) and the
# kernel's overlayfs, then the fuzz
# targets (scripts/fuzz.sh: the kept corpus replayed, then each target
# fuzzed LSTORE_FUZZ_SECONDS, default 60; 0 skips the fuzz part). Needs root.
# Ends with "total: N passed, M failed" (tests and fuzz checks together);
# the exit status is non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
if [ "$(id -u)" != 0 ]; then
  echo "test: the tests mount overlays and make device nodes: run as root" >&2
  exit 1
fi
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)
cargo clippy --locked --workspace --all-targets -- -D warnings

log=$(mktemp /tmp/lstore-test.XXXXXX.log)
trap 'rm -f "$log" "$log.fuzz"' EXIT
status=0
# tests/examples.rs runs the example programs at target/debug/examples/NAME,
# where `cargo build --examples` puts them (cargo test leaves only hashed names).
cargo build --locked --examples 2>&1 | tee "$log" || status=$?
# --no-fail-fast: a failing test binary must not hide the results of the
# binaries after it.
cargo test --locked --workspace --all-targets --no-fail-fast 2>&1 | tee -a "$log" || status=$?
# --all-targets leaves doc tests out: the library's documented example.
cargo test --locked --workspace --doc 2>&1 | tee -a "$log" || status=$?
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  # A build error or a test binary that died before its summary.
  echo "test: cargo test failed (exit $status) without a failed test to count" >&2
  failed=1
fi

# After cargo test: the fuzz build links the RocksDB library it built.
fuzz_seconds="${LSTORE_FUZZ_SECONDS:-60}"
if [ "$fuzz_seconds" = 0 ]; then
  echo "fuzz: skipped (LSTORE_FUZZ_SECONDS=0)"
else
  fuzz_status=0
  bash scripts/fuzz.sh "$fuzz_seconds" 2>&1 | tee "$log.fuzz" || fuzz_status=$?
  fuzz_line=$(grep -E '^fuzz: [0-9]+ passed, [0-9]+ failed$' "$log.fuzz" | tail -1 || true)
  if [ -n "$fuzz_line" ]; then
    passed=$((passed + $(echo "$fuzz_line" | awk '{print $2}')))
    failed=$((failed + $(echo "$fuzz_line" | awk '{print $4}')))
  elif [ "$fuzz_status" != 0 ]; then
    failed=$((failed + 1))
  fi
  [ "$fuzz_status" = 0 ] || status=1
fi

echo "total: $passed passed, $failed failed"
exit "$status"
