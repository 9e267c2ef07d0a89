#!/usr/bin/env bash
# Side-by-side, cold: lstore against containerd, podman and skopeo+umoci,
# and against the bounds (decompression alone, sha256sum alone, GNU tar -x
# of every layer in parallel), on a corpus made here.
#
#   scripts/bench-compare.sh [--quick] [--runs N] [--size SIZE] [--out FILE] [--keep]
#                            [--only "realistic small big"] [--serve]
#
# Corpus (each image in gzip, zstd and uncompressed variants):
#   realistic  debootstrap --variant=minbase bookworm rootfs; a layer of
#              python3.11 (+pip) from its .debs (apt-get download, dpkg -x);
#              a small app layer with whiteouts and an opaque directory
#   small      one layer of 100,000 small files (0-4 KiB)
#   big        one layer of 8 files of 128 MiB (~1 GiB; half random bytes)
# --quick makes small 20,000 files and big 256 MiB, and runs everything once.
# --only runs the named images only (e.g. to repeat one on a quieter machine).
# --serve also runs scripts/bench-serve.sh on the realistic gzip image
# (skopeo copy from lstore serve vs docker-registry) and adds its table.
# --keep leaves the scratch filesystem (corpus, OCI layouts) mounted for
# profiling and says where.
#
# Everything lives on a loop-mounted ext4 image made for the run and
# removed at the end: the corpus, a docker-registry on a free loopback
# port serving it, and each tool's store (containerd runs its own daemon
# with its own root, state and socket; podman gets its own storage.conf).
# Before every timed run the tool's store is emptied and the page cache
# dropped. Timings are hyperfine medians; peak RSS comes from GNU time
# (for containerd: the daemon's VmHWM plus ctr's peak). The stores make
# their data durable (fsync, syncfs) and GNU tar does not, so the bounds are
# given twice: tar -x alone, and tar -x followed by syncfs.
#
# Needs root, Debian's packages (installed with apt-get as needed) and
# nothing else from the network.
set -euo pipefail
BENCH_NAME=bench-compare
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

quick=0 runs="" size=40G out="" keep=0 only="realistic small big" serve=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --only) only=$2; shift 2 ;;
    --serve) serve=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
  esac
done
if [ "$quick" -eq 1 ]; then
  small_files=20000 big_count=2 runs=${runs:-1}
else
  small_files=100000 big_count=8 runs=${runs:-3}
fi
big_mib=128

bench_need_root
bench_install debootstrap containerd podman skopeo umoci docker-registry hyperfine \
  pigz zstd jq time curl tar
lstore_bin=$(bench_lstore_bin)

work=$(mktemp -d /tmp/lstore-bench-compare.XXXXXX)
S="$work/fs"
containerd_pid=""
BENCH_REGISTRY_PID=""
cleanup() {
  set +e
  [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  [ -n "$BENCH_REGISTRY_PID" ] && kill "$BENCH_REGISTRY_PID" 2>/dev/null
  if [ "$keep" -eq 1 ]; then
    bench_log "kept: corpus and layouts under $S/corpus (unmount with: umount $S; the image file is ${BENCH_IMAGES[*]})"
    return
  fi
  bench_scratch_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
bench_scratch_mount ext4 "$size" "$S"
C="$S/corpus" R="$work/results"
mkdir -p "$C" "$R"
fs_desc=$(bench_fs_of "$S")
bench_log "scratch: $fs_desc at $S; results in $R"

# ---- corpus -------------------------------------------------------------

. "$top/scripts/bench-corpus.sh"

t0=$(date +%s)
bench_log "building the corpus (debootstrap from $mirror, python .debs, $small_files small files, $big_count x $big_mib MiB)"
wanted() { [[ " $only " == *" $1 "* ]]; }
if wanted realistic; then
  make_realistic_tars
fi
if wanted small; then
  make_small "$small_files"
  layer_tar "$C/small" small
fi
if wanted big; then
  make_big "$big_count" "$big_mib"
  layer_tar "$C/big" big
fi
hash_tars
images=()
for img in realistic small big; do wanted "$img" && images+=("$img"); done
[ ${#images[@]} -gt 0 ] || bench_die "--only: none of realistic, small, big named"
declare -A image_layers=([realistic]="base python app" [small]="small" [big]="big")
comps=(gzip zstd plain)
for img in "${images[@]}"; do
  for comp in "${comps[@]}"; do
    # shellcheck disable=SC2086
    make_layout "$img" "$comp" ${image_layers[$img]}
  done
done
rm -rf "$C/base" "$C/python" "$C/app" "$C/small" "$C/big" "$C"/debs-*
bench_log "corpus built in $(($(date +%s) - t0)) s"

port=$(bench_free_port)
reg="127.0.0.1:$port"
bench_registry_start "$S/registry" "$port"
for img in "${images[@]}"; do
  for comp in "${comps[@]}"; do
    skopeo copy -q --preserve-digests --dest-tls-verify=false \
      "oci:$C/layouts/$img-$comp:latest" "docker://$reg/bench/$img:$comp"
  done
done
bench_log "corpus served by docker-registry at $reg"

# Facts about each image: layers, compressed and uncompressed bytes, files.
declare -A n_layers blob_bytes tar_bytes n_files
for img in "${images[@]}"; do
  n_layers[$img]=0 tar_bytes[$img]=0 n_files[$img]=0
  for name in ${image_layers[$img]}; do
    n_layers[$img]=$((n_layers[$img] + 1))
    tar_bytes[$img]=$((tar_bytes[$img] + $(stat -c %s "$C/tars/$name.tar")))
    n_files[$img]=$((n_files[$img] + $(tar -tf "$C/tars/$name.tar" | wc -l)))
  done
  for comp in "${comps[@]}"; do
    blob_bytes[$img-$comp]=$(jq '[.layers[].size] | add' \
      "$C/layouts/$img-$comp/blobs/sha256/$(jq -r '.manifests[0].digest' "$C/layouts/$img-$comp/index.json" | cut -d: -f2)")
  done
done

# ---- the tools ----------------------------------------------------------
# Each is a bash function that hyperfine runs (exported, --shell bash);
# reset_* empties a tool's store before a run and drops the page cache.

export S R reg lstore_bin
mkdir -p "$S/containerd" "$S/podman"
cat > "$S/containerd/config.toml" <<TOML
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$S/containerd/containerd.sock"
[ttrpc]
  address = "$S/containerd/containerd.sock.ttrpc"
TOML
cat > "$S/podman/storage.conf" <<TOML
[storage]
driver = "overlay"
graphroot = "$S/podman/root"
runroot = "$S/podman/run"
TOML
cat > "$S/podman/registries.conf" <<TOML
unqualified-search-registries = []
[[registry]]
location = "$reg"
insecure = true
TOML
cat > "$S/podman/containers.conf" <<TOML
[engine]
events_logger = "none"
cgroup_manager = "cgroupfs"
TOML
export CONTAINERS_STORAGE_CONF="$S/podman/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$S/podman/registries.conf"
export CONTAINERS_CONF="$S/podman/containers.conf"

# Runs a command under GNU time, appending its peak RSS (KiB) to $RSS_FILE.
timed() { /usr/bin/time -a -o "$RSS_FILE" -f '%M' "$@"; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
unmount_below() {
  awk -v m="$1/" 'index($2, m) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r p; do umount -l "$p"; done
}

reset_lstore() { rm -rf "$S/lstore"; drop_caches; }
run_lstore_pull() { timed "$lstore_bin" --root "$S/lstore" pull -q "$reg/bench/$1"; }
run_lstore_load() { timed "$lstore_bin" --root "$S/lstore" load -i "$S/corpus/layouts/$1" >/dev/null 2>&1; }

# containerd: a fresh daemon per run; the old one's peak RSS is kept first.
containerd_stop() {
  local pid
  pid=$(cat "$S/containerd/pid" 2>/dev/null) || return 0
  if [ -f "$S/containerd/pulled" ]; then
    awk '/VmHWM/ { print $2 }' "/proc/$pid/status" >> "$RSS_FILE.daemon"
    rm -f "$S/containerd/pulled"
  fi
  kill "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$S/containerd/pid"
}
reset_containerd() {
  containerd_stop
  unmount_below "$S/containerd"
  rm -rf "$S/containerd/root" "$S/containerd/state"
  containerd --config "$S/containerd/config.toml" > "$S/containerd/log" 2>&1 &
  echo $! > "$S/containerd/pid"
  for _ in $(seq 100); do
    ctr --address "$S/containerd/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  drop_caches
}
run_containerd() {
  touch "$S/containerd/pulled"
  timed ctr --address "$S/containerd/containerd.sock" -n bench images pull \
    --plain-http --snapshotter overlayfs "$reg/bench/$1" >/dev/null
}

reset_podman() {
  unmount_below "$S/podman"
  rm -rf "$S/podman/root" "$S/podman/run"
  drop_caches
}
run_podman() { timed podman pull -q --tls-verify=false "$reg/bench/$1" >/dev/null; }

reset_umoci() {
  rm -rf "$S/umoci"
  mkdir -p "$S/umoci"
  drop_caches
}
run_skopeo_umoci() {
  timed skopeo copy -q --src-tls-verify=false "docker://$reg/bench/$1" "oci:$S/umoci/layout:latest" &&
    timed umoci unpack --image "$S/umoci/layout:latest" "$S/umoci/bundle" >/dev/null
}
run_umoci() { timed umoci unpack --image "$S/corpus/layouts/$1:latest" "$S/umoci/bundle" >/dev/null; }

# Bounds: every layer blob of the image at once, as the stores do.
layer_blobs() {
  local l="$S/corpus/layouts/$1" m
  m=$(jq -r '.manifests[0].digest' "$l/index.json" | cut -d: -f2)
  jq -r '.layers[].digest' "$l/blobs/sha256/$m" | cut -d: -f2 | sed "s|^|$l/blobs/sha256/|"
}
decompressor() {
  case "$1" in
    *-gzip) echo "pigz -dc" ;;
    *-zstd) echo "zstd -dcq" ;;
    *) echo "cat" ;;
  esac
}
reset_bound() { rm -rf "$S/tarx"; mkdir -p "$S/tarx"; drop_caches; }
run_decompress() {
  local d b
  d=$(decompressor "$1")
  for b in $(layer_blobs "$1"); do timed $d "$b" > /dev/null & done
  wait
}
run_sha256() {
  local b
  for b in $(layer_blobs "$1"); do timed sha256sum "$b" > /dev/null & done
  wait
}
run_tar() {
  local d b i=0
  d=$(decompressor "$1")
  for b in $(layer_blobs "$1"); do
    i=$((i + 1))
    mkdir -p "$S/tarx/$i"
    if [ "$d" = cat ]; then
      timed tar --numeric-owner -xf "$b" -C "$S/tarx/$i" &
    else
      timed tar --numeric-owner -I "${d% -*}" -xf "$b" -C "$S/tarx/$i" &
    fi
  done
  wait
}
# The same, made durable as the stores make theirs: one syncfs at the end.
run_tar_sync() {
  run_tar "$1"
  timed sync -f "$S/tarx"
}
export -f timed drop_caches unmount_below reset_lstore run_lstore_pull run_lstore_load \
  containerd_stop reset_containerd run_containerd reset_podman run_podman reset_umoci \
  run_skopeo_umoci run_umoci layer_blobs decompressor reset_bound run_decompress run_sha256 run_tar run_tar_sync

# measure CASE TOOL PREPARE COMMAND: hyperfine median (s) and peak RSS (KiB)
# into $R/CASE.TOOL.{json,rss}; a tool that fails is reported as such.
measure() {
  local case=$1 tool=$2 prepare=$3 cmd=$4
  export RSS_FILE="$R/$case.$tool.rss"
  rm -f "$RSS_FILE" "$RSS_FILE.daemon"
  bench_log "$case: $tool"
  if ! hyperfine --shell bash --style basic --runs "$runs" --prepare "$prepare" \
       --export-json "$R/$case.$tool.json" "$cmd" > "$R/$case.$tool.log" 2>&1; then
    bench_log "$case: $tool failed (see $R/$case.$tool.log)"
    rm -f "$R/$case.$tool.json"
  fi
  [ "$tool" = containerd ] && containerd_stop
  return 0
}

for img in "${images[@]}"; do
  for comp in "${comps[@]}"; do
    c="$img-$comp" ref="$img:$comp"
    measure "$c" lstore_pull reset_lstore "run_lstore_pull $ref"
    # Re-pull of the image now present: one manifest request expected
    # (counted in the registry's access log).
    before=$(grep -c '"lstore/' "$S/registry.log" || true)
    "$lstore_bin" --root "$S/lstore" pull -q "$reg/bench/$ref" >/dev/null
    after=$(grep -c '"lstore/' "$S/registry.log" || true)
    echo $((after - before)) > "$R/$c.repull.requests"
    hyperfine --shell bash --style basic --warmup 1 --runs 10 \
      --export-json "$R/$c.repull.json" \
      "'$lstore_bin' --root '$S/lstore' pull -q '$reg/bench/$ref'" > "$R/$c.repull.log" 2>&1 || true
    measure "$c" containerd reset_containerd "run_containerd $ref"
    measure "$c" podman reset_podman "run_podman $ref"
    measure "$c" skopeo_umoci reset_umoci "run_skopeo_umoci $ref"
    measure "$c" lstore_load reset_lstore "run_lstore_load $c"
    measure "$c" umoci reset_umoci "run_umoci $c"
    measure "$c" decompress reset_bound "run_decompress $c"
    measure "$c" sha256 reset_bound "run_sha256 $c"
    measure "$c" tar reset_bound "run_tar $c"
    measure "$c" tar_sync reset_bound "run_tar_sync $c"
    reset_lstore; reset_podman; reset_umoci; reset_bound
  done
done

# ---- report -------------------------------------------------------------

median() { [ -f "$R/$1.json" ] && jq -r '.results[0].median' "$R/$1.json" || echo NA; }
peak() {
  local f="$R/$1.rss"
  [ -f "$f" ] || { echo NA; return; }
  local m
  m=$(sort -n "$f" | tail -1)
  if [ -f "$f.daemon" ]; then m=$((m + $(sort -n "$f.daemon" | tail -1))); fi
  echo "$m"
}
fmt_s() { [ "$1" = NA ] && echo "n/a" || awk -v s="$1" 'BEGIN { printf "%.2f", s }'; }
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || b <= 0) print "n/a"; else printf "%.2f", a / b }'; }
fmt_mib() { [ "$1" = NA ] && echo "n/a" || awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
min_of() { printf '%s\n' "$@" | grep -v NA | sort -g | head -1 || true; }

{
  echo "### Pull, cold (seconds, median of $runs)"
  echo
  echo "| image | layers | blobs | tar | files | lstore pull | containerd | podman | skopeo+umoci | tar -x ∥ (bound) | tar -x ∥ + syncfs | decompress ∥ | sha256sum ∥ | lstore / faster of containerd, podman | lstore / bound | lstore / (bound + syncfs) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for img in "${images[@]}"; do
    for comp in "${comps[@]}"; do
      c="$img-$comp"
      l=$(median "$c.lstore_pull") cd=$(median "$c.containerd") pd=$(median "$c.podman")
      su=$(median "$c.skopeo_umoci") tx=$(median "$c.tar") dc=$(median "$c.decompress") sh=$(median "$c.sha256")
      ts=$(median "$c.tar_sync")
      faster=$(min_of "$cd" "$pd")
      echo "| $img $comp | ${n_layers[$img]} | $(bench_si "${blob_bytes[$c]}")B | $(bench_si "${tar_bytes[$img]}")B | $(bench_si "${n_files[$img]}") | $(fmt_s "$l") | $(fmt_s "$cd") | $(fmt_s "$pd") | $(fmt_s "$su") | $(fmt_s "$tx") | $(fmt_s "$ts") | $(fmt_s "$dc") | $(fmt_s "$sh") | $(fmt_ratio "$l" "${faster:-NA}") | $(fmt_ratio "$l" "$tx") | $(fmt_ratio "$l" "$ts") |"
    done
  done
  if wanted small; then
    echo
    echo "### Files per second, cold pull (the small-files image)"
    echo
    echo "| image | lstore pull | containerd | podman | tar -x | tar -x + syncfs | lstore / tar -x |"
    echo "|---|---|---|---|---|---|---|"
    for comp in "${comps[@]}"; do
      c="small-$comp" f=${n_files[small]}
      fps() { awk -v f="$f" -v s="$1" 'BEGIN { if (s == "NA") print "n/a"; else printf "%.0f", f / s }'; }
      l=$(median "$c.lstore_pull") tx=$(median "$c.tar")
      echo "| small $comp | $(fps "$l") | $(fps "$(median "$c.containerd")") | $(fps "$(median "$c.podman")") | $(fps "$tx") | $(fps "$(median "$c.tar_sync")") | $(fmt_ratio "$tx" "$l") |"
    done
  fi
  echo
  echo "### Load of an OCI layout, cold (seconds), and re-pull of a present image"
  echo
  echo "| image | lstore load | umoci unpack | lstore / umoci | re-pull (warm, mean of 10) | registry requests on re-pull |"
  echo "|---|---|---|---|---|---|"
  for img in "${images[@]}"; do
    for comp in "${comps[@]}"; do
      c="$img-$comp"
      l=$(median "$c.lstore_load") u=$(median "$c.umoci")
      rp=$([ -f "$R/$c.repull.json" ] && jq -r '.results[0].mean * 1000 | floor | tostring + " ms"' "$R/$c.repull.json" || echo n/a)
      echo "| $img $comp | $(fmt_s "$l") | $(fmt_s "$u") | $(fmt_ratio "$l" "$u") | $rp | $(cat "$R/$c.repull.requests" 2>/dev/null || echo n/a) |"
    done
  done
  echo
  echo "### Peak RSS, MiB (largest run)"
  echo
  echo "| image | layers in flight | lstore pull | per layer in flight | lstore load | containerd (daemon + ctr) | podman | skopeo / umoci |"
  echo "|---|---|---|---|---|---|---|---|"
  for img in "${images[@]}"; do
    for comp in "${comps[@]}"; do
      c="$img-$comp" inflight=$((n_layers[$img] < 3 ? n_layers[$img] : 3))
      l=$(peak "$c.lstore_pull")
      per=$([ "$l" = NA ] && echo n/a || awk -v k="$l" -v n="$inflight" 'BEGIN { printf "%.0f", k / 1024 / n }')
      echo "| $img $comp | $inflight | $(fmt_mib "$l") | $per | $(fmt_mib "$(peak "$c.lstore_load")") | $(fmt_mib "$(peak "$c.containerd")") | $(fmt_mib "$(peak "$c.podman")") | $(fmt_mib "$(peak "$c.skopeo_umoci")") |"
    done
  done
  echo
  echo "n/a for umoci with zstd: umoci 0.4.7 cannot read zstd layers."
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r); all stores, the registry and the corpus on $fs_desc; base layer: $base_note."
  echo "Versions: $("$lstore_bin" --version), containerd $(containerd --version | awk '{ print $3 }'), $(podman --version), $(skopeo --version), $(umoci --version), $(tar --version | head -1), pigz $(pigz --version 2>&1 | awk '{ print $2 }'), zstd $(zstd --version | grep -o 'v[0-9.]*' | head -1), $(hyperfine --version)."
} > "$R/report.md"

if [ "$serve" -eq 1 ]; then
  if wanted realistic; then
    LSTORE_BIN="$lstore_bin" "$top/scripts/bench-serve.sh" --layout "$C/layouts/realistic-gzip" \
      --runs "$runs" --out "$R/serve.md" >&2 || bench_log "bench-serve failed"
    [ -f "$R/serve.md" ] && { echo; cat "$R/serve.md"; } >> "$R/report.md"
  else
    bench_log "--serve needs the realistic image (--only without realistic)"
  fi
fi

cat "$R/report.md"
if [ -n "$out" ]; then
  cp "$R/report.md" "$out"
  mkdir -p "$out.d" && cp "$R"/*.json "$R"/*.rss* "$R"/*.log "$out.d/" 2>/dev/null || true
  bench_log "report written to $out (raw results in $out.d/)"
fi
