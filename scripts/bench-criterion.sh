#!/usr/bin/env bash
# The criterion benches (benches/) with their scratch stores on a
# filesystem made for the run: a loop-mounted ext4 image (default) or a
# tmpfs, removed at the end.
#
#   scripts/bench-criterion.sh [--fs ext4|tmpfs] [--size SIZE] [CARGO BENCH ARGS...]
#
# e.g. `scripts/bench-criterion.sh --bench extract`, or
# `scripts/bench-criterion.sh --bench removal -- rmi`. The benches build in
# the `dev` profile (the project's only one: `release` would compile RocksDB
# again). LSTORE_BENCH_QUICK=1 makes the fixtures small.
set -euo pipefail
BENCH_NAME=bench-criterion
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

fs=ext4 size=16G
while [ $# -gt 0 ]; do
  case "$1" in
    --fs) fs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
bench_need_root
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"

work=$(mktemp -d /tmp/lstore-bench-criterion.XXXXXX)
trap 'bench_scratch_cleanup; rm -rf "$work"' EXIT
bench_scratch_mount "$fs" "$size" "$work/fs"
export LSTORE_BENCH_DIR="$work/fs"
bench_log "scratch stores on $(bench_fs_of "$work/fs") at $LSTORE_BENCH_DIR"
cd "$top"
cargo bench --locked --profile dev "$@"
