#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against the real binary,
# docker-registry, skopeo, umoci and the kernel's overlayfs. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
if [ "$(id -u)" != 0 ]; then
  echo "test: the tests mount overlays and make device nodes: run as root" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --workspace --all-targets 2>&1 | tee /tmp/lstore-test.log
status=${PIPESTATUS[0]}
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' /tmp/lstore-test.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/lstore-test.log | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed"
exit "$status"
