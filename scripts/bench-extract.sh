#!/usr/bin/env bash
# Extraction throughput of one image with the real lstore binary: the
# numbers to paste into an issue.
#
#   scripts/bench-extract.sh [options] IMAGE_OR_LAYOUT
#
# IMAGE_OR_LAYOUT is a docker-archive tar or an OCI layout (directory or
# tar), stored with `lstore load -i`, or else an image reference, stored with
# `lstore pull` (so the network and the registry count too).
#
# Each run stores the image into a fresh store on a scratch filesystem made
# for the run: a loop-mounted ext4 image (default) or a tmpfs. Cold runs
# write back and drop the page cache first (the input is read from its
# disk); warm runs do not (the input is in memory). Printed per run: wall
# time, MB/s of uncompressed layer tar and of compressed blobs, files/s,
# and the peak RSS of the lstore process.
#
# Options:
#   --fs ext4|tmpfs     scratch filesystem (default ext4)
#   --size SIZE         its size (default 8G; sparse for ext4)
#   --cold N --warm N   runs of each kind (default 3 and 3)
#   --plain-http        passed to `lstore pull` (registries not on loopback)
#   --platform P        passed to `lstore pull` / used by load (OS/ARCH)
#   --keep              leave the last store mounted and say where
# Environment: LSTORE_BIN (default: built from this checkout),
# BENCH_IMAGE_DIR (where the ext4 image file goes, default /var/tmp).
set -euo pipefail
BENCH_NAME=bench-extract
. "$(dirname "$0")/bench-lib.sh"

fs=ext4 size=8G cold=3 warm=3 keep=0 pull_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fs) fs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --cold) cold=$2; shift 2 ;;
    --warm) warm=$2; shift 2 ;;
    --plain-http) pull_args+=(--plain-http); shift ;;
    --platform) pull_args+=(--platform "$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) bench_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || bench_die "usage: $0 [options] IMAGE_OR_LAYOUT (see --help)"
input=$1
bench_need_root
command -v jq >/dev/null && [ -x /usr/bin/time ] || bench_install jq time
lstore_bin=$(bench_lstore_bin)

if [ -e "$input" ]; then
  input=$(realpath "$input")
  store_cmd=(load -i "$input")
  what="lstore load -i $input"
else
  store_cmd=(pull -q "${pull_args[@]}" "$input")
  what="lstore pull $input"
fi

work=$(mktemp -d /tmp/lstore-bench-extract.XXXXXX)
cleanup() {
  if [ "$keep" -eq 1 ]; then
    bench_log "kept: store at $work/fs/store (unmount with: umount $work/fs)"
    return
  fi
  bench_scratch_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
bench_scratch_mount "$fs" "$size" "$work/fs"
store="$work/fs/store"
fs_desc=$(bench_fs_of "$work/fs")

one_run() {
  local kind=$1
  rm -rf "$store"
  if [ "$kind" = cold ]; then bench_drop_caches; else sync; fi
  local t0 t1 rss out
  out=$(mktemp)
  t0=$(date +%s.%N)
  if ! /usr/bin/time -f '%M' -o "$out" "$lstore_bin" --root "$store" "${store_cmd[@]}" \
       >/dev/null 2>"$work/lstore.log"; then
    cat "$work/lstore.log" >&2
    bench_die "lstore failed"
  fi
  t1=$(date +%s.%N)
  rss=$(tail -1 "$out")
  rm -f "$out"
  echo "$kind $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $rss"
}

bench_log "$what: $cold cold and $warm warm runs, store on $fs_desc"
runs=()
for _ in $(seq "$cold"); do runs+=("$(one_run cold)"); done
for _ in $(seq "$warm"); do runs+=("$(one_run warm)"); done
[ ${#runs[@]} -gt 0 ] || bench_die "no runs asked for"

# What one run stored: the last run's store (every run stores the same).
tar_bytes=0 blob_bytes=0 layers=0 files=0
declare -A seen=()
while read -r id; do
  while IFS=$'\t' read -r chain l_size l_csize l_path; do
    [ -n "${seen[$chain]:-}" ] && continue
    seen[$chain]=1
    layers=$((layers + 1))
    tar_bytes=$((tar_bytes + l_size))
    blob_bytes=$((blob_bytes + l_csize))
    files=$((files + $(find "$l_path" -mindepth 1 | wc -l)))
  done < <("$lstore_bin" --root "$store" inspect "$id" |
             jq -r '.layers[] | [.chain_id, .size, .compressed_size, .path] | @tsv')
done < <("$lstore_bin" --root "$store" images --format json | jq -r '.[].id' | sort -u)

echo
echo "lstore extraction benchmark"
echo "  command:  $what"
echo "  image:    $layers layers, $(bench_si "$blob_bytes")B compressed, $(bench_si "$tar_bytes")B uncompressed tar, $(bench_si "$files") files"
echo "  store on: $fs_desc ($size)"
echo "  machine:  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
echo "  lstore:   $("$lstore_bin" --version 2>/dev/null || echo "$lstore_bin")"
echo
printf '%-6s %9s %12s %12s %12s %10s\n' run seconds "tar MB/s" "blob MB/s" "files/s" "peak RSS"
for r in "${runs[@]}"; do
  read -r kind secs rss <<< "$r"
  awk -v k="$kind" -v s="$secs" -v t="$tar_bytes" -v b="$blob_bytes" -v f="$files" -v m="$rss" \
    'BEGIN { if (s <= 0) s = 0.001;
             printf "%-6s %9.3f %12.1f %12.1f %12.0f %7.0f MiB\n", k, s, t / s / 1e6, b / s / 1e6, f / s, m / 1024 }'
done
for kind in cold warm; do
  printf '%s\n' "${runs[@]}" | awk -v k="$kind" '$1 == k { print $2 }' | sort -g |
    awk -v k="$kind" -v t="$tar_bytes" -v f="$files" '
      { s[++n] = $1 }
      END { if (!n) exit; m = (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2;
            if (m <= 0) m = 0.001;
            printf "median %s: %.3f s, %.1f MB/s, %.0f files/s\n", k, m, t / m / 1e6, f / m }'
done
