#!/usr/bin/env bash
# `ctr images pull` into lstore (`lstore snapshotter`, containerd's proxy
# snapshotter) against containerd's own overlayfs snapshotter, cold, from
# the same local docker-registry, with hyperfine.
#
#   scripts/bench-snapshotter.sh [--runs N] [--fs ext4|tmpfs] [--out FILE.md]
#                                [--only ctr|cri]
#
# Three ctr cases, the same image each time:
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
# Three CRI cases (containerd's CRI plugin, `PullImage` of runtime.v1 as the
# kubelet sends it, its `snapshotter` set to overlayfs or lstore):
#   CRI overlayfs  PullImage, containerd alone
#   CRI holds      PullImage after `lstore pull` (untimed) of the image: the
#                  CRI prepares with the layer's label, lstore answers
#                  AlreadyExists, no layer blob is fetched
#   CRI lacks      `lstore pull` then PullImage, both timed
# Each CRI run starts from nothing: a fresh containerd root and state (and
# for lstore a fresh store and snapshotter), then the page cache is dropped.
# Debian ships no crictl: the client is a few lines of Python over grpcio,
# its proto subset compiled here with grpcio-tools, in a venv at
# $LSTORE_BENCH_VENV (default /var/cache/lstore/bench-venv; made with pip
# from PyPI if missing). Its own start-up, timed cold, is reported apart; it
# is inside each CRI figure.
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
# docker-registry, hyperfine, skopeo, openssl, curl and python3 (venv).
# LSTORE_BIN names the lstore binary (else it is built).
set -euo pipefail
BENCH_NAME=bench-snapshotter
top="$(cd "$(dirname "$0")/.." && pwd)"
. "$top/scripts/bench-lib.sh"

runs=5 fs=ext4 out="" only=""
venv=${LSTORE_BENCH_VENV:-/var/cache/lstore/bench-venv}
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --fs) fs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
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
  # The CRI cases' daemons (started by cri/fresh.sh, not children of this
  # shell).
  local f
  for f in "$S/fs/cri/containerd.pid" "$S/fs/cri/snapshotter.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
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

if [ "$only" != cri ]; then
result="$W/result.md"
hyperfine --runs "$runs" --export-markdown "$result" \
  --command-name "ctr pull, overlayfs" --prepare "$prep_overlayfs" "$(pull overlayfs)" \
  --command-name "ctr pull, lstore lacks the layers" --prepare "$prep_lacks" "$(pull lstore)" \
  --command-name "ctr pull, lstore holds the layers" --prepare "$prep_holds" "$(pull lstore)"
fi

# ------------------------------------------------------------------ CRI
# containerd's CRI plugin (PullImage, as the kubelet sends it), through a
# small Python client: Debian ships no crictl. Each timed run gets a fresh
# containerd (root, state and, for lstore, the store and its snapshotter
# made anew): cri/fresh.sh below, hyperfine's --prepare.
cri_results=""
if [ "$only" != ctr ]; then
  # The ctr cases' daemons are done with.
  for pid in "$ctd_pid" "$snap_pid"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
  ctd_pid="" snap_pid=""
  C="$W/cri"
  mkdir -p "$C/py" "$C/cni-bin" "$C/cni-conf" "$C/hosts/$reg"
  if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    bench_log "making $venv (grpcio, grpcio-tools from PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q grpcio grpcio-tools
  fi
  # The subset of runtime.v1 (kubernetes/cri-api pkg/apis/runtime/v1/api.proto)
  # a pull needs; the fields left out are never sent.
  cat > "$C/py/api.proto" <<'PROTO'
syntax = "proto3";
package runtime.v1;
service ImageService {
  rpc PullImage(PullImageRequest) returns (PullImageResponse) {}
}
message ImageSpec {
  string image = 1;
  map<string, string> annotations = 2;
}
message AuthConfig {}
message PodSandboxConfig {}
message PullImageRequest {
  ImageSpec image = 1;
  AuthConfig auth = 2;
  PodSandboxConfig sandbox_config = 3;
}
message PullImageResponse {
  string image_ref = 1;
}
PROTO
  "$venv/bin/python" -m grpc_tools.protoc -I "$C/py" --python_out="$C/py" --grpc_python_out="$C/py" "$C/py/api.proto"
  cat > "$C/py/pull.py" <<'PY'
"""cri pull SOCKET REFERENCE: runtime.v1 ImageService/PullImage; prints image_ref."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc
import api_pb2, api_pb2_grpc
with grpc.insecure_channel("unix://" + sys.argv[1]) as channel:
    stub = api_pb2_grpc.ImageServiceStub(channel)
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=sys.argv[2]))
    print(stub.PullImage(request, timeout=600).image_ref)
PY
  printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$reg" "$reg" \
    > "$C/hosts/$reg/hosts.toml"
  for snapshotter in lstore overlayfs; do
    cat > "$C/config-$snapshotter.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "$snapshotter"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$C/cni-bin"
  conf_dir = "$C/cni-conf"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "$C/hosts"
[proxy_plugins.lstore]
  type = "snapshot"
  address = "$C/snapshotter.sock"
TOML
  done
  # cri/fresh.sh lstore|overlayfs [hold]: stops the CRI containerd (and
  # lstore's snapshotter), makes root, state and store anew, starts them,
  # with "hold" has lstore pull the image, then drops the page cache.
  cat > "$C/fresh.sh" <<SH
#!/usr/bin/env bash
set -euo pipefail
for f in "$C/containerd.pid" "$C/snapshotter.pid"; do
  [ -f "\$f" ] || continue
  pid=\$(cat "\$f"); rm -f "\$f"
  kill "\$pid" 2>/dev/null || continue
  for _ in \$(seq 300); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.05; done
done
awk -v m="$C/" 'index(\$2, m) == 1 { print \$2 }' /proc/mounts | sort -r | while read -r m; do umount -l "\$m"; done
rm -rf "$C/root" "$C/state" "$C/lstore" "$C/snapshotter.sock" "$C/containerd.sock" "$C/containerd.sock.ttrpc"
if [ "\$1" = lstore ]; then
  setsid "$lstore_bin" --root "$C/lstore" snapshotter --socket "$C/snapshotter.sock" \
    </dev/null >>"$C/snapshotter.log" 2>&1 &
  echo \$! > "$C/snapshotter.pid"
  for _ in \$(seq 100); do [ -S "$C/snapshotter.sock" ] && break; sleep 0.05; done
  [ -S "$C/snapshotter.sock" ] || { echo "the snapshotter did not start" >&2; exit 1; }
fi
setsid containerd --config "$C/config-\$1.toml" </dev/null >>"$C/containerd.log" 2>&1 &
echo \$! > "$C/containerd.pid"
for _ in \$(seq 200); do ctr --address "$C/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.05; done
ctr --address "$C/containerd.sock" version >/dev/null
# containerd's start-up work (the CRI plugin's, its gc) is not measured.
sleep 1
if [ "\${2:-}" = hold ]; then "$lstore_bin" --root "$C/lstore" pull -q "$ref" >/dev/null; fi
sync; echo 3 > /proc/sys/vm/drop_caches
SH
  chmod +x "$C/fresh.sh"
  cri="'$venv/bin/python' '$C/py/pull.py' '$C/containerd.sock' '$ref' >/dev/null"
  cri_lstore_pull="'$lstore_bin' --root '$C/lstore' pull -q '$ref' >/dev/null"
  cri_images() { ctr --address "$C/containerd.sock" -n k8s.io images ls -q | grep -c . || true; }

  # Once, untimed: each case does what it says.
  "$C/fresh.sh" overlayfs; eval "$cri"
  [ "$(cri_images)" -ge 1 ] || bench_die "the CRI pull (overlayfs) left no image in k8s.io"
  "$C/fresh.sh" lstore; eval "$cri_lstore_pull"; eval "$cri"
  layers=$(ctr --address "$C/containerd.sock" -n k8s.io snapshots --snapshotter lstore ls | grep -c Committed || true)
  [ "$layers" = 3 ] || bench_die "after lstore pull and a CRI pull, containerd has $layers committed lstore snapshots, not 3"
  "$C/fresh.sh" lstore hold; before=$(ls -i -d "$C/lstore"/overlay2/*/diff | sort)
  eval "$cri"; after=$(ls -i -d "$C/lstore"/overlay2/*/diff | sort)
  [ "$before" = "$after" ] || bench_die "a CRI pull of an image lstore holds replaced lstore's layer folders"
  blobs=$(find "$C/root/io.containerd.content.v1.content/blobs" -type f 2>/dev/null | wc -l)
  [ "$blobs" -le 2 ] || bench_die "a CRI pull of an image lstore holds left $blobs blobs in containerd's content store (manifest and config only expected)"

  cri_results="$W/result-cri.md"
  hyperfine --runs "$runs" --export-markdown "$cri_results" --export-json "$W/result-cri.json" \
    --command-name "CRI pull, overlayfs" --prepare "'$C/fresh.sh' overlayfs" "$cri" \
    --command-name "CRI pull, lstore holds the image" --prepare "'$C/fresh.sh' lstore hold" "$cri" \
    --command-name "lstore pull + CRI pull, lstore lacks the image" --prepare "'$C/fresh.sh' lstore" \
      "$cri_lstore_pull && $cri"
  # What the Python client's start (interpreter, grpc; cold) costs in each
  # CRI figure.
  hyperfine --runs "$runs" --prepare "$drop" --export-markdown "$W/result-client.md" \
    --command-name "Python CRI client start-up (no call)" \
    "'$venv/bin/python' -c 'import sys; sys.path.insert(0, \"$C/py\"); import grpc, api_pb2, api_pb2_grpc'"
fi

echo
echo "== results (hyperfine, $runs runs, cold, $(bench_fs_of "$W"); $(nproc) cores; containerd $(containerd --version | awk '{print $3}'); load average $(cut -d' ' -f1-3 /proc/loadavg))"
{
  [ "$only" = cri ] || cat "$W/result.md"
  if [ -n "$cri_results" ]; then
    [ "$only" = cri ] || echo
    cat "$cri_results"; echo; cat "$W/result-client.md"; echo
    # Medians (hyperfine's table gives means).
    python3 -c 'import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print("- %s: median %.3f s (min %.3f, max %.3f, %d runs)" % (r["command"], r["median"], r["min"], r["max"], len(r["times"])))' "$W/result-cri.json"
  fi
} | tee "${out:-/dev/null}"
