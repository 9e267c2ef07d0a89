#!/usr/bin/env bash
# `ctr images pull` into lstore (`lstore snapshotter`, containerd's proxy
# snapshotter) against containerd's own overlayfs snapshotter, cold, from
# the same local docker-registry, with hyperfine.
#
#   scripts/bench-snapshotter.sh [--runs N] [--fs ext4|tmpfs] [--out FILE.md]
#
# Three cases, the same image each time:
#   overlayfs      ctr images pull --snapshotter overlayfs
#   lstore lacks   ctr images pull --snapshotter lstore, the layers new to
#                  lstore (containerd applies them; lstore keeps them as its
#                  layer folders)
#   lstore holds   the same, after `lstore pull` of the image (containerd
#                  1.6's ctr still fetches and applies every layer; lstore
#                  keeps its own folders and drops containerd's copies)
# Before each timed run containerd forgets the image (`ctr images rm --sync`:
# its content and snapshots go), lstore's gc frees what no image holds, and
# the page cache is dropped.
#
# Image (made here, no network): three gzip layers, 412 files, about 52 MB
# unpacked (as scripts/bench-pull.sh's "large"): 200 text files of 128 KiB,
# 100 random files of 200 KiB, 110 small files, one random 5 MiB file and
# one zero 1 MiB file.
#
# Everything (registry storage, containerd's root and state, lstore's
# store, the snapshotter's socket) lives on a filesystem made for the run:
# an ext4 image on a direct-I/O loop device (default) or a tmpfs. containerd
# runs as its own daemon with its own config. Needs root, containerd, ctr,
# docker-registry, hyperfine, skopeo, openssl and curl.
set -euo pipefail
BENCH_NAME=bench-snapshotter
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

runs=5 fs=ext4 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --fs) fs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) bench_die "unknown argument $1 (see --help)" ;;
  esac
done
bench_need_root
for tool in containerd ctr docker-registry hyperfine skopeo openssl curl; do
  command -v "$tool" >/dev/null || bench_die "$tool is missing (scripts/setup.sh installs it)"
done
lstore_bin=$(bench_lstore_bin)

S=$(mktemp -d /tmp/lstore-bench-snapshotter.XXXXXX)
reg_pid="" ctd_pid="" snap_pid=""
cleanup() {
  # No errexit here: a killed process's `wait` status must not end the
  # clean-up before the scratch filesystem is unmounted.
  set +e
  local pid
  for pid in "$ctd_pid" "$snap_pid" "$reg_pid"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  bench_scratch_cleanup
  rmdir "$S" 2>/dev/null || bench_log "left $S (something is still mounted there)"
}
trap cleanup EXIT
bench_scratch_mount "$fs" 6G "$S/fs"
W="$S/fs"

# ---------------------------------------------------------------- image
layout="$W/layout"
mkdir -p "$layout/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
put() { local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$layout/blobs/sha256/$h"; echo "$h"; }
descs="" diffs="" sep=""
layer() {
  local dir=$1 tarf="$W/layer.tar" diff digest size
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$dir" -cf "$tarf" .
  diff=$(sha256sum "$tarf" | cut -d' ' -f1)
  gzip -n -6 -c "$tarf" > "$tarf.gz"
  digest=$(put "$tarf.gz"); size=$(stat -c %s "$tarf.gz")
  descs+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}"
  diffs+="$sep\"sha256:$diff\""; sep=","
  rm -f "$tarf" "$tarf.gz"
}
# Deterministic pseudo-random bytes: AES-CTR of zeros under a fixed key.
random_bytes() { { openssl enc -aes-128-ctr -nosalt -pass "pass:$1" -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c "$2"; }
src="$W/src"
mkdir -p "$src/1/usr/share/text" "$src/2/var/lib/data" "$src/3/etc/app" "$src/3/opt/app"
(cd "$src/1/usr/share/text" && random_bytes text $((200 * 98304)) | base64 -w 76 | split -a 3 -d -b 131072 - text-)
(cd "$src/2/var/lib/data" && random_bytes data $((100 * 204800)) | split -a 3 -d -b 204800 - blob-)
for i in $(seq 1 110); do printf 'key%s = value %s\n' "$i" "$i" > "$src/3/etc/app/conf$i.ini"; done
random_bytes big $((5 * 1048576)) > "$src/3/opt/app/big.bin"
head -c 1048576 /dev/zero > "$src/3/opt/app/zeros.bin"
layer "$src/1"; layer "$src/2"; layer "$src/3"
printf '{"created":"2026-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(dpkg --print-architecture 2>/dev/null || echo amd64)" "$diffs" > "$W/config.json"
config_hex=$(put "$W/config.json"); config_size=$(stat -c %s "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$config_hex" "$config_size" "$descs" > "$W/manifest.json"
manifest_hex=$(put "$W/manifest.json"); manifest_size=$(stat -c %s "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest_hex" "$manifest_size" > "$layout/index.json"
rm -rf "$src"

# ------------------------------------------- registry, containerd, snapshotter
port=$(bench_free_port)
reg="127.0.0.1:$port"
bench_registry_start "$W/registry" "$port" quiet
reg_pid=$BENCH_REGISTRY_PID
skopeo copy -q --dest-tls-verify=false "oci:$layout:latest" "docker://$reg/bench/large:latest"
ref="$reg/bench/large:latest"

store="$W/lstore" sock="$W/snapshotter.sock" ctd="$W/containerd"
mkdir -p "$ctd"
cat > "$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$ctd/containerd.sock"
[ttrpc]
  address = "$ctd/containerd.sock.ttrpc"
[proxy_plugins.lstore]
  type = "snapshot"
  address = "$sock"
TOML
"$lstore_bin" --root "$store" snapshotter --socket "$sock" > "$W/snapshotter.log" 2>&1 &
snap_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$W/snapshotter.log"; bench_die "the snapshotter did not start"; }
containerd --config "$ctd/config.toml" > "$ctd/log" 2>&1 &
ctd_pid=$!
ctr="ctr --address $ctd/containerd.sock -n bench"
for _ in $(seq 100); do $ctr version >/dev/null 2>&1 && break; sleep 0.1; done
$ctr version >/dev/null || { cat "$ctd/log"; bench_die "containerd did not start"; }

# What each case does before its timed run (hyperfine --prepare).
forget="$ctr images rm --sync '$ref' >/dev/null 2>&1 || true"
drop="sync; echo 3 > /proc/sys/vm/drop_caches"
lstore_cmd="'$lstore_bin' --root '$store'"
prep_overlayfs="$forget; $drop"
prep_lacks="$forget; $lstore_cmd rmi '$ref' >/dev/null 2>&1 || true; $lstore_cmd gc >/dev/null; $drop"
prep_holds="$forget; $lstore_cmd pull -q '$ref' >/dev/null; $lstore_cmd gc >/dev/null; $drop"
pull() { echo "$ctr images pull --plain-http --snapshotter $1 '$ref' >/dev/null"; }

# Once, untimed: each case does what it says.
eval "$prep_lacks"; eval "$(pull lstore)"
layers=$("$lstore_bin" --root "$store" df --format json | sed -n 's/.*"containerd_layers": *\([0-9]*\).*/\1/p')
[ "$layers" = 3 ] || bench_die "after a pull lstore lacks, lstore df shows $layers layers held by containerd, not 3"
eval "$prep_holds"; before=$(ls -i -d "$store"/overlay2/*/diff | sort)
eval "$(pull lstore)"; after=$(ls -i -d "$store"/overlay2/*/diff | sort)
[ "$before" = "$after" ] || bench_die "a pull lstore holds replaced lstore's layer folders"
eval "$prep_overlayfs"; eval "$(pull overlayfs)"

result="$W/result.md"
hyperfine --runs "$runs" --export-markdown "$result" \
  --command-name "ctr pull, overlayfs" --prepare "$prep_overlayfs" "$(pull overlayfs)" \
  --command-name "ctr pull, lstore lacks the layers" --prepare "$prep_lacks" "$(pull lstore)" \
  --command-name "ctr pull, lstore holds the layers" --prepare "$prep_holds" "$(pull lstore)"

echo
echo "== results (hyperfine, $runs runs, cold, $(bench_fs_of "$W"); $(nproc) cores; containerd $(containerd --version | awk '{print $3}'))"
tee "${out:-/dev/null}" < "$result"
