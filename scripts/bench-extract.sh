#!/usr/bin/env bash
# Extraction throughput of one image: a thin wrapper over `lstore bench`
# that can also put the scratch stores on a loop-mounted ext4 image (the
# root filesystem of a build machine can be many times slower than ext4 at
# creating files, which would measure the machine, not the store).
#
#   scripts/bench-extract.sh [options] IMAGE_OR_LAYOUT
#
# IMAGE_OR_LAYOUT is a docker-archive tar or an OCI layout (directory or
# tar), stored with `lstore load -i`, or else an image reference, stored
# with `lstore pull` (so the network and the registry count too). See
# `lstore bench --help` for what is measured and printed.
#
# Options:
#   --fs ext4|tmpfs     scratch filesystem (default ext4; tmpfs is what
#                       `lstore bench` makes by itself)
#   --size SIZE         its size (default 8G; sparse for ext4)
#   --cold N --warm N   runs of each kind (default 3 and 3)
#   --plain-http        passed to `lstore pull` (registries not on loopback)
#   --platform P        passed to `lstore pull` (OS/ARCH)
#   --format json       the report as JSON
# Environment: LSTORE_BIN (default: built from this checkout),
# BENCH_IMAGE_DIR (where the ext4 image file goes, default /var/tmp).
set -euo pipefail
BENCH_NAME=bench-extract
. "$(dirname "$0")/bench-lib.sh"

fs=ext4 size=8G bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fs) fs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --cold|--warm|--platform|--format) bench_args+=("$1" "$2"); shift 2 ;;
    --plain-http) bench_args+=(--plain-http); shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) bench_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || bench_die "usage: $0 [options] IMAGE_OR_LAYOUT (see --help)"
input=$1
bench_need_root
lstore_bin=$(bench_lstore_bin)

case "$fs" in
  tmpfs) exec "$lstore_bin" bench --size "$size" "${bench_args[@]}" "$input" ;;
  ext4) ;;
  *) bench_die "unknown filesystem kind $fs (ext4 or tmpfs)" ;;
esac
work=$(mktemp -d /tmp/lstore-bench-extract.XXXXXX)
cleanup() {
  bench_scratch_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
bench_scratch_mount ext4 "$size" "$work/fs"
"$lstore_bin" bench --dir "$work/fs" "${bench_args[@]}" "$input"
