#!/usr/bin/env bash
# Installs what lstore needs on Debian 12 and builds it.
# Packages: libclang-dev/clang (the rocksdb crate runs bindgen and compiles
# RocksDB), docker-registry, skopeo and umoci (tests and the demo), the
# clients that pull from `lstore serve` in tests/serve_clients.rs
# (containerd with runc, podman: its conmon and containers-common come with
# it; as root it needs neither uidmap nor fuse-overlayfs), the small tools
# the benchmarks use, tar-split (tests/tarsplit.rs checks lstore's layer
# records with it), and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=(build-essential pkg-config libclang-dev clang docker-registry skopeo umoci
           containerd runc podman
           apache2-utils openssl ca-certificates jq hyperfine pigz zstd tar-split
           uidmap xfsprogs e2fsprogs)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust >= 1.88) is required" >&2; exit 1; }

# cargo-fuzz for scripts/fuzz.sh (the fuzz targets scripts/test.sh runs);
# the fuzz build needs nothing else beyond what RocksDB's build needs.
fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $fuzz_version"; then
  echo "setup: installing cargo-fuzz $fuzz_version"
  env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz --version "$fuzz_version"
fi

# A target dir outside the clone keeps the RocksDB build (15+ minutes) between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
mkdir -p "$CARGO_TARGET_DIR"
echo "setup: building (target dir $CARGO_TARGET_DIR; the first build compiles RocksDB and takes a while)"
cargo build --locked --bins
echo "setup: done: $CARGO_TARGET_DIR/debug/lstore"
