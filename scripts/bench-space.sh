#!/usr/bin/env bash
# Disk space of the same three pulls in lstore, containerd and podman, and
# the time lstore takes for them (pull and load), on a corpus made here.
#
#   scripts/bench-space.sh [--runs N] [--compare BIN] [--out FILE] [--keep]
#
# Corpus (gzip layers, made from Debian packages, no other network):
#   bookworm  one layer: debootstrap --variant=minbase bookworm
#   python    bookworm's layer + a layer of python3.11 (+pip) from its .debs
#   edge      one layer: bookworm's tree after an "upgrade": a few files
#             rewritten, some files with new times only, a package's docs
#             removed, a file added; so a different blob holding mostly the
#             same files (equal content and metadata), some equal in content
#             only
# Each tool pulls bookworm, then python, then edge from a docker-registry on
# loopback into an empty store; then `du` of its whole root (hardlinked
# inodes counted once). lstore runs twice: blobs kept (the default) and with
# `lstore config keep-layer-blobs false` (when the binary has that setting).
# The floor: lstore's store with files of equal content and metadata linked
# by hand (util-linux `hardlink -X` over its layer folders).
#
# Speed: `lstore pull` of the three images and `lstore load` of their OCI
# layouts into an empty store, median of --runs (default 5), page cache
# dropped before each; with --compare BIN, that binary runs the same rounds
# in turn (A/B on the same machine, in one run).
#
# Everything lives on a loop-mounted ext4 image made for the run (removed at
# the end unless --keep). Needs root.
set -euo pipefail
BENCH_NAME=bench-space
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

runs=5 compare="" out="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --compare) compare=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
  esac
done
[ -z "$compare" ] || [ -x "$compare" ] || bench_die "--compare $compare is not executable"

bench_need_root
bench_install debootstrap containerd podman skopeo docker-registry pigz zstd jq curl tar util-linux
lstore_bin=$(bench_lstore_bin)

work=$(mktemp -d /tmp/lstore-bench-space.XXXXXX)
S="$work/fs"
BENCH_REGISTRY_PID=""
containerd_pid=""
cleanup() {
  set +e
  [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
  [ -n "$BENCH_REGISTRY_PID" ] && kill "$BENCH_REGISTRY_PID" 2>/dev/null
  if [ "$keep" -eq 1 ]; then
    bench_log "kept: $S (umount $S; image file ${BENCH_IMAGES[*]})"
    return
  fi
  bench_scratch_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
bench_scratch_mount ext4 16G "$S"
C="$S/corpus" R="$work/results"
mkdir -p "$C" "$R"

# ---- corpus -------------------------------------------------------------

. "$top/scripts/bench-corpus.sh"
t0=$(date +%s)
bench_log "building the corpus (debootstrap from $mirror, python .debs)"
make_base
make_python
# edge: the same tree after an upgrade of a few packages.
cp -a "$C/base" "$C/edge"
echo "trixie/sid" > "$C/edge/etc/debian_version"
find "$C/edge/usr/bin" -maxdepth 1 -type f -name '[a-d]*' -print0 |
  while IFS= read -r -d '' f; do printf '\n' >> "$f"; done
find "$C/edge/usr/share/zoneinfo" -type f -print0 2>/dev/null | xargs -0r touch -d 2026-01-01
find "$C/edge/usr/lib/x86_64-linux-gnu" -maxdepth 1 -type f -name 'libm*' -print0 | xargs -0r touch -d 2026-01-01
rm -rf "$C/edge/usr/share/doc/coreutils"
printf 'edge\n' > "$C/edge/etc/edge-release"
layer_tar "$C/base" bookworm --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*'
layer_tar "$C/python" python
layer_tar "$C/edge" edge --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*'
rm -rf "$C/base" "$C/python" "$C/edge" "$C"/debs-*
hash_tars
make_layout bookworm gzip bookworm
make_layout python gzip bookworm python
make_layout edge gzip edge
images=(bookworm python edge)
bench_log "corpus built in $(($(date +%s) - t0)) s"

port=$(bench_free_port)
reg="127.0.0.1:$port"
bench_registry_start "$S/registry" "$port" quiet
for img in "${images[@]}"; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false \
    "oci:$C/layouts/$img-gzip:latest" "docker://$reg/space/$img:latest"
done
blob_total=0
for img in "${images[@]}"; do
  m="$C/layouts/$img-gzip/blobs/sha256/$(jq -r '.manifests[0].digest' "$C/layouts/$img-gzip/index.json" | cut -d: -f2)"
  jq -r '.layers[] | "\(.digest) \(.size)"' "$m"
done | sort -u > "$R/layer-blobs"
blob_total=$(awk '{ s += $2 } END { print s }' "$R/layer-blobs")
tar_total=0
for t in "$C"/tars/*.tar; do tar_total=$((tar_total + $(stat -c %s "$t"))); done

# ---- space --------------------------------------------------------------

du_bytes() { du -s --block-size=1 "$1" | cut -f1; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }
has_setting() { "$1" --root "$2" config keep-layer-blobs >/dev/null 2>&1; }

declare -A space
lstore_space() {
  local bin=$1 name=$2 keep_blobs=$3 root="$S/$2"
  rm -rf "$root"
  if [ "$keep_blobs" = false ]; then
    if ! has_setting "$bin" "$root"; then
      bench_log "$name: this lstore has no keep-layer-blobs setting; skipped"
      return
    fi
    "$bin" --root "$root" config keep-layer-blobs false >/dev/null
  fi
  for img in "${images[@]}"; do "$bin" --root "$root" pull -q "$reg/space/$img:latest" >/dev/null; done
  sync
  space[$name]=$(du_bytes "$root")
  "$bin" --root "$root" df > "$R/$name.df" 2>&1 || true
  bench_log "$name: $(mb "${space[$name]}") MB"
}
lstore_space "$lstore_bin" lstore true
lstore_space "$lstore_bin" lstore-blobless false
if [ -n "$compare" ]; then
  lstore_space "$compare" compare true
  lstore_space "$compare" compare-blobless false
fi

# The floor: lstore's folders with equal files linked by hand (content,
# mode, owner, times and xattrs equal), then without the layer blobs.
cp -a "$S/lstore" "$S/floor"
hardlink -q -X "$S/floor/overlay2" > /dev/null 2>&1 || true
sync
space[floor]=$(du_bytes "$S/floor")
floor_blobs=0
while read -r d _; do
  f="$S/floor/blobs/sha256/${d#sha256:}"
  [ -f "$f" ] && floor_blobs=$((floor_blobs + $(du_bytes "$f")))
done < "$R/layer-blobs"
space[floor-blobless]=$((space[floor] - floor_blobs))
rm -rf "$S/floor"

# containerd: its own daemon, root and socket; the overlayfs snapshotter.
mkdir -p "$S/containerd"
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
containerd --config "$S/containerd/config.toml" > "$S/containerd/log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do
  ctr --address "$S/containerd/containerd.sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
for img in "${images[@]}"; do
  ctr --address "$S/containerd/containerd.sock" -n space images pull --plain-http \
    --snapshotter overlayfs "$reg/space/$img:latest" >/dev/null
done
sync
space[containerd]=$(du_bytes "$S/containerd/root")
kill "$containerd_pid"; wait "$containerd_pid" 2>/dev/null || true; containerd_pid=""

# podman: its own storage.conf (overlay driver).
mkdir -p "$S/podman"
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
  "$S/podman/root" "$S/podman/run" > "$S/podman/storage.conf"
printf 'unqualified-search-registries = []\n[[registry]]\nlocation = "%s"\ninsecure = true\n' \
  "$reg" > "$S/podman/registries.conf"
printf '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n' > "$S/podman/containers.conf"
for img in "${images[@]}"; do
  CONTAINERS_STORAGE_CONF="$S/podman/storage.conf" CONTAINERS_REGISTRIES_CONF="$S/podman/registries.conf" \
    CONTAINERS_CONF="$S/podman/containers.conf" podman pull -q --tls-verify=false "$reg/space/$img:latest" >/dev/null
done
sync
space[podman]=$(du_bytes "$S/podman/root")

# ---- speed --------------------------------------------------------------

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "NA"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
seconds_of() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'; }
pull_all() { local bin=$1 root=$2; for img in "${images[@]}"; do "$bin" --root "$root" pull -q "$reg/space/$img:latest" || return 1; done; }
load_all() { local bin=$1 root=$2; for img in "${images[@]}"; do "$bin" --root "$root" load -i "$C/layouts/$img-gzip" || return 1; done; }
bins=("$lstore_bin")
[ -n "$compare" ] && bins+=("$compare")
for ((r = 1; r <= runs; r++)); do
  for i in "${!bins[@]}"; do
    for op in pull load; do
      rm -rf "$S/speed"; bench_drop_caches
      seconds_of "${op}_all" "${bins[$i]}" "$S/speed" >> "$R/$op-$i"
    done
  done
done
rm -rf "$S/speed"

# ---- report -------------------------------------------------------------

{
  echo "## Space: three pulls (bookworm, python, edge), du of each store's root"
  echo
  echo "Store on $(bench_fs_of "$S"); layer blobs $(mb "$blob_total") MB compressed, layer tars $(mb "$tar_total") MB."
  echo
  echo "| store | MB |"
  echo "|---|---|"
  for k in containerd podman lstore lstore-blobless compare compare-blobless floor floor-blobless; do
    [ -n "${space[$k]:-}" ] || continue
    case $k in
      lstore) label="lstore ($lstore_bin)" ;;
      lstore-blobless) label="lstore, keep-layer-blobs false" ;;
      compare) label="lstore ($compare)" ;;
      compare-blobless) label="lstore ($compare), keep-layer-blobs false" ;;
      floor) label="floor: lstore's store, equal files linked by hand (hardlink -X)" ;;
      floor-blobless) label="floor without layer blobs" ;;
      *) label=$k ;;
    esac
    echo "| $label | $(mb "${space[$k]}") |"
  done
  echo
  echo '`lstore df` after the three pulls (blobs kept):'
  echo
  echo '```'
  cat "$R/lstore.df"
  echo '```'
  if [ -f "$R/lstore-blobless.df" ]; then
    echo
    echo '`lstore df` with keep-layer-blobs false:'
    echo
    echo '```'
    cat "$R/lstore-blobless.df"
    echo '```'
  fi
  echo
  echo "## Speed: the three images into an empty store, median of $runs (page cache dropped before each)"
  echo
  echo "| binary | pull (s) | load (s) |"
  echo "|---|---|---|"
  for i in "${!bins[@]}"; do
    echo "| ${bins[$i]} | $(median < "$R/pull-$i") | $(median < "$R/load-$i") |"
  done
} > "$R/report.md"
cat "$R/report.md"
[ -z "$out" ] || cp "$R/report.md" "$out"
