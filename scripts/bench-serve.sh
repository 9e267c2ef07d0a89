#!/usr/bin/env bash
# `lstore serve` against docker-registry as the source of `skopeo copy`:
# one client warm, one client cold (page cache dropped before each run),
# CLIENTS skopeo copies at once, and CLIENTS HTTP connections at once
# fetching every blob CLIENTS times (one curl --parallel: the servers' own
# throughput without skopeo's hashing and writing); peak RSS of each server
# and its CPU time per GB delivered (on a small machine the clients' CPU
# bounds the throughput of both servers; the CPU time says what each server
# costs).
#
#   scripts/bench-serve.sh [--quick] [--runs N] [--clients N] [--fs ext4|tmpfs]
#                          [--size SIZE] [--layout DIR] [--out FILE]
#                          [--compare BIN]
#
# Image: the realistic image of scripts/bench-compare.sh in its gzip form
# (debootstrap minbase bookworm, python3.11, an app layer; needs the Debian
# mirror apt uses). --quick makes a synthetic image instead (5,000 small
# files and one 64 MiB file, no network) and runs everything once.
# --layout DIR serves an OCI layout already made (its "latest" image).
# --compare BIN also serves the same store with another lstore binary (an
# A/B of two builds): a third server taking its turn in every round, its
# column headed "lstore B".
#
# Both servers read the same blobs from the same filesystem: a loop-mounted
# ext4 image by default (--fs tmpfs for memory), made for the run. The
# image is pushed to docker-registry (skopeo --preserve-digests) and pulled
# from it into lstore's store, so both serve byte-identical blobs; lstore
# serves it read-only. Clients write to a tmpfs of their own, so the disk
# under the servers is all the disk that is measured. docker-registry runs
# with its access log off and log level error, lstore serve with its
# defaults.
#
# Needs root (mounts, dropping the page cache) and Debian's packages.
set -euo pipefail
BENCH_NAME=bench-serve
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

quick=0 runs="" clients=16 fs=ext4 size=16G layout="" out="" compare=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --fs) fs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --layout) layout=$(cd "$2" && pwd); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compare) compare=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
  esac
done
if [ "$quick" -eq 1 ]; then runs=${runs:-1}; else runs=${runs:-5}; fi

bench_need_root
bench_install debootstrap skopeo docker-registry pigz zstd jq curl tar
lstore_bin=$(bench_lstore_bin)

work=$(mktemp -d /tmp/lstore-bench-serve.XXXXXX)
S="$work/fs" O="$work/out" R="$work/results" C="$work/fs/corpus"
registry_pid="" serve_pid="" serve_b_pid="" lst_b=""
stop() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; return 0; }
cleanup() {
  set +e
  stop "$serve_b_pid"
  stop "$serve_pid"
  stop "$registry_pid"
  bench_scratch_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
bench_scratch_mount "$fs" "$size" "$S"
bench_scratch_mount tmpfs 8G "$O"
mkdir -p "$R" "$C"
fs_desc=$(bench_fs_of "$S")
bench_log "servers' data on $fs_desc; clients write to tmpfs; results in $R"

# ---- the image ----------------------------------------------------------

. "$top/scripts/bench-corpus.sh"
if [ -n "$layout" ]; then
  image_note="the OCI layout $layout"
  cp -a "$layout" "$C/layout"
elif [ "$quick" -eq 1 ]; then
  image_note="synthetic: 5,000 small files and one 64 MiB file, gzip"
  make_small 5000
  make_big 1 64
  layer_tar "$C/small" small
  layer_tar "$C/big" big
  hash_tars
  make_layout quick gzip small big
  mv "$C/layouts/quick-gzip" "$C/layout"
else
  image_note="realistic (gzip): $base_note, python3.11, app"
  make_realistic_tars
  hash_tars
  make_layout realistic gzip base python app
  mv "$C/layouts/realistic-gzip" "$C/layout"
fi
rm -rf "$C/tars" "$C/small" "$C/big" "$C/layouts"
manifest_hex=$(jq -r '.manifests[0].digest' "$C/layout/index.json" | cut -d: -f2)
image_bytes=$(jq '[.config.size, .layers[].size] | add' "$C/layout/blobs/sha256/$manifest_hex")
blobs=$(jq -r '.config.digest, .layers[].digest' "$C/layout/blobs/sha256/$manifest_hex")
bench_log "image: $(bench_si "$image_bytes")B in $(echo "$blobs" | wc -l) blobs ($image_note)"

# ---- the servers --------------------------------------------------------

reg_port=$(bench_free_port)
reg="127.0.0.1:$reg_port"
bench_registry_start "$S/registry" "$reg_port" quiet
registry_pid=$BENCH_REGISTRY_PID
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$C/layout:latest" "docker://$reg/bench/image:latest"
"$lstore_bin" --root "$S/lstore" pull -q "$reg/bench/image:latest" >/dev/null
rm -rf "$C"

# start_serve BIN NAME: BIN serves the store read-only; sets serve_pid_new
# and serve_addr_new (the address it printed).
start_serve() {
  "$1" --root "$S/lstore" serve --addr 127.0.0.1:0 --read-only --namespace "$reg" \
    > "$R/$2.out" 2> "$R/$2.log" &
  serve_pid_new=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$R/$2.out" && break; sleep 0.1; done
  serve_addr_new=$(sed -n 's/^listening on //p' "$R/$2.out")
  [ -n "$serve_addr_new" ] || bench_die "$1 serve did not start (see $R/$2.log)"
}
start_serve "$lstore_bin" serve
serve_pid=$serve_pid_new lst=$serve_addr_new
sides="registry lstore"
if [ -n "$compare" ]; then
  start_serve "$compare" serve-b
  serve_b_pid=$serve_pid_new lst_b=$serve_addr_new
  sides="registry lstore lstore_b"
  bench_log "lstore B ($compare) at $lst_b (pid $serve_b_pid)"
fi
for server in "$reg" "$lst" ${lst_b:-}; do
  got=$(skopeo inspect --tls-verify=false --raw "docker://$server/bench/image:latest" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$manifest_hex" ] || bench_die "$server serves manifest $got, not $manifest_hex"
done
bench_log "docker-registry at $reg, lstore serve at $lst (pid $serve_pid)"

# ---- runs ---------------------------------------------------------------
# The servers take turns run by run (which goes first rotates), so that a
# change in the machine's load falls on all alike. The load average is
# recorded before each round.

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
reset_out() { rm -rf "$O"/c*; }
# copy SERVER N: N skopeo copies at once into the tmpfs.
copy() {
  local i pids=()
  for ((i = 0; i < $2; i++)); do
    skopeo copy -q --src-tls-verify=false "docker://$1/bench/image:latest" "oci:$O/c$i:x" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
}
# fetch SERVER N: every blob of the image N times, N connections at once
# (one curl process, so that the client side costs little).
fetch() {
  local i b args=()
  for ((i = 0; i < $2; i++)); do
    for b in $blobs; do args+=(-o /dev/null "http://$1/v2/bench/image/blobs/$b"); done
  done
  curl -fsS --no-progress-meter --parallel --parallel-max "$2" "${args[@]}"
}
# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Images each run of a case delivers.
images_per_run() { case "$1" in warm|cold) echo 1 ;; *) echo "$clients" ;; esac; }

# run_case SIDE CASE: one run of CASE against SIDE's server; its seconds go
# to $R/SIDE.CASE.times and the server's CPU ticks to $R/SIDE.CASE.ticks.
run_case() {
  local side=$1 case=$2 server=$reg pid=$registry_pid t0 t1 c0 c1
  [ "$side" = lstore ] && server=$lst pid=$serve_pid
  [ "$side" = lstore_b ] && server=$lst_b pid=$serve_b_pid
  case "$case" in
    cold) reset_out; drop_caches ;;
    *) reset_out ;;
  esac
  c0=$(cpu_ticks "$pid") t0=$(date +%s.%N)
  case "$case" in
    fetch) fetch "$server" "$clients" ;;
    copies) copy "$server" "$clients" ;;
    *) copy "$server" 1 ;;
  esac || bench_die "$case from $side failed"
  t1=$(date +%s.%N) c1=$(cpu_ticks "$pid")
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }' >> "$R/$side.$case.times"
  echo $((c1 - c0)) >> "$R/$side.$case.ticks"
}

for case in warm cold copies fetch; do
  bench_log "$case: $runs runs per server"
  if [ "$case" != cold ]; then
    # A warm-up run each, not counted.
    for side in $sides; do run_case "$side" "$case"; done
    rm -f "$R"/*."$case".times "$R"/*."$case".ticks
  fi
  for ((r = 0; r < runs; r++)); do
    set -- $sides
    for ((k = 0; k < r % $#; k++)); do set -- "${@:2}" "$1"; done
    cut -d' ' -f1 /proc/loadavg >> "$R/load.$case"
    for side in "$@"; do run_case "$side" "$case"; done
  done
done
reset_out
hwm() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
rss_registry=$(hwm "$registry_pid") rss_lstore=$(hwm "$serve_pid")
rss_b=""; [ -n "$compare" ] && rss_b=$(hwm "$serve_b_pid")

# ---- report -------------------------------------------------------------

median() {
  [ -f "$R/$1.times" ] || { echo NA; return; }
  sort -g "$R/$1.times" | awk '{ a[NR] = $1 } END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fmt_s() { [ "$1" = NA ] && echo "n/a" || awk -v s="$1" 'BEGIN { printf "%.2f s", s }'; }
# MB/s for N copies of the image in S seconds.
rate() { [ "$2" = NA ] && echo "n/a" || awk -v n="$1" -v b="$image_bytes" -v s="$2" 'BEGIN { printf "%.0f MB/s", n * b / s / 1e6 }'; }
# Server CPU milliseconds per GB of image delivered.
cpu_per_gb() {
  [ -f "$R/$1.ticks" ] || { echo "n/a"; return; }
  awk -v hz="$(getconf CLK_TCK)" -v b="$image_bytes" -v n="$(images_per_run "${1#*.}")" \
    '{ t += $1; runs++ } END { printf "%.0f", t / hz * 1000 / (runs * n * b / 1e9) }' "$R/$1.ticks"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b <= 0) print "n/a"; else printf "%.2f", a / b }'; }
{
  echo "### \`lstore serve\` vs docker-registry: \`skopeo copy\` of one image (median of $runs runs each, the servers taking turns)"
  echo
  echo "| case | docker-registry | lstore serve | lstore speed-up (registry time / lstore time) |"
  echo "|---|---|---|---|"
  for c in warm cold; do
    r=$(median "registry.$c") l=$(median "lstore.$c")
    echo "| 1 client, $c | $(fmt_s "$r") ($(rate 1 "$r")) | $(fmt_s "$l") ($(rate 1 "$l")) | $(ratio "$r" "$l")x |"
  done
  r=$(median registry.copies) l=$(median lstore.copies)
  echo "| $clients skopeo copies at once, warm | $(fmt_s "$r") ($(rate "$clients" "$r")) | $(fmt_s "$l") ($(rate "$clients" "$l")) | $(ratio "$r" "$l")x |"
  r=$(median registry.fetch) l=$(median lstore.fetch)
  echo "| $clients HTTP connections fetching every blob $clients times, warm | $(fmt_s "$r") ($(rate "$clients" "$r")) | $(fmt_s "$l") ($(rate "$clients" "$l")) | $(ratio "$r" "$l")x |"
  echo "| peak RSS of the server | $((rss_registry / 1024)) MiB | $((rss_lstore / 1024)) MiB | |"
  echo
  echo "Server CPU time (user + system) per GB delivered, ms:"
  echo
  echo "| case | docker-registry | lstore serve | registry / lstore |"
  echo "|---|---|---|---|"
  for c in warm cold copies fetch; do
    r=$(cpu_per_gb "registry.$c") l=$(cpu_per_gb "lstore.$c")
    echo "| $c | $r | $l | $(ratio "${r/n\/a/NA}" "${l/n\/a/NA}") |"
  done
  if [ -n "$compare" ]; then
    echo
    echo "lstore B = \`$compare\`, serving the same store, taking its turn in every round (median of $runs runs each):"
    echo
    echo "| case | docker-registry | lstore | lstore B | registry / lstore | registry / lstore B | CPU ms/GB lstore, B |"
    echo "|---|---|---|---|---|---|---|"
    for c in warm cold copies fetch; do
      r=$(median "registry.$c") l=$(median "lstore.$c") b=$(median "lstore_b.$c")
      echo "| $c | $(fmt_s "$r") | $(fmt_s "$l") | $(fmt_s "$b") | $(ratio "$r" "$l")x | $(ratio "$r" "$b")x | $(cpu_per_gb "lstore.$c"), $(cpu_per_gb "lstore_b.$c") |"
    done
    echo "| peak RSS | $((rss_registry / 1024)) MiB | $((rss_lstore / 1024)) MiB | $((rss_b / 1024)) MiB | | | |"
  fi
  echo
  echo "Load average (1 min) before each round: $(for c in warm cold copies fetch; do [ -f "$R/load.$c" ] && printf '%s %s; ' "$c" "$(sort -g "$R/load.$c" | sed -n '1p;$p' | paste -sd- -)"; done)"
  echo
  echo "Image: $(bench_si "$image_bytes")B compressed ($image_note). Servers' data on $fs_desc, clients writing to tmpfs; MB/s counts the image's bytes (config and layers) delivered to all clients."
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r). Versions: $("$lstore_bin" --version), docker-registry $(docker-registry --version 2>/dev/null | awk '{ print $3 }'), $(skopeo --version), $(curl --version | head -1 | cut -d' ' -f1-2)."
} > "$R/report.md"
cat "$R/report.md"
if [ -n "$out" ]; then
  cp "$R/report.md" "$out"
  mkdir -p "$out.d" && cp "$R"/*.times "$R"/*.ticks "$R"/*.log "$R"/load.* "$out.d/" 2>/dev/null || true
  bench_log "report written to $out (raw results in $out.d/)"
fi
