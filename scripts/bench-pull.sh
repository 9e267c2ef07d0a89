#!/usr/bin/env bash
# `lstore pull` against `skopeo copy docker://… oci:…` + `umoci unpack`, side
# by side with hyperfine, from the same local docker-registry.
#
#   scripts/bench-pull.sh [--runs N] [--out FILE.md]
#
# Images (made here, no network):
#   sample  sample/tool:1.0 of scripts/make-sample.sh: its base (gzip) and
#           tool layer (gzipped by skopeo on the way to the registry); not
#           sample/app, whose zstd layer umoci 0.4 cannot unpack
#   large   three gzip layers, 412 files, about 52 MB unpacked: 200 text
#           files of 128 KiB, 100 random files of 200 KiB, 110 small files,
#           one random 5 MiB file and one zero 1 MiB file
#
# Everything the tools write goes to a tmpfs mounted for the run (so disk
# speed is out of it); the registry's storage too. Each timed run starts
# from an empty store or an empty output directory (hyperfine --prepare).
# Both sides fetch over loopback HTTP, verify digests and unpack every
# layer; lstore also keeps the blobs and makes overlay2 folders. Needs root
# (tmpfs, umoci's owners and device nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"

runs=10 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-pull: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-pull: run as root (tmpfs, umoci unpack)" >&2; exit 1; }
for tool in hyperfine skopeo umoci docker-registry openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-pull: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

cargo build --locked --bins -q
lstore_bin="$CARGO_TARGET_DIR/debug/lstore"

work=$(mktemp -d /tmp/lstore-bench-pull.XXXXXX)
reg_pid=""
cleanup() {
  # wait returns the killed registry's status (143): not a failure here.
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null; wait "$reg_pid" 2>/dev/null || true; fi
  mountpoint -q "$work" && umount "$work"
  rm -rf "$work"
}
trap cleanup EXIT
mount -t tmpfs -o size=3G,mode=0755 tmpfs "$work"

# ---------------------------------------------------------------- images
bash scripts/make-sample.sh "$work/sample" >/dev/null

# layer DIR -> appends a gzip layer of DIR to the large layout
large="$work/large"
mkdir -p "$large/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' > "$large/oci-layout"
put() { local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$large/blobs/sha256/$h"; echo "$h"; }
descs="" diffs="" sep=""
layer() {
  local dir=$1 tarf="$work/layer.tar" diff digest size
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$dir" -cf "$tarf" .
  diff=$(sha256sum "$tarf" | cut -d' ' -f1)
  gzip -n -6 -c "$tarf" > "$tarf.gz"
  digest=$(put "$tarf.gz"); size=$(stat -c %s "$tarf.gz")
  descs+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}"
  diffs+="$sep\"sha256:$diff\""; sep=","
  rm -f "$tarf" "$tarf.gz"
}
# Deterministic pseudo-random bytes: AES-CTR of zeros under a fixed key.
# (openssl ends on SIGPIPE when head has enough: not a failure.)
random_bytes() { { openssl enc -aes-128-ctr -nosalt -pass "pass:$1" -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c "$2"; }

src="$work/src"
mkdir -p "$src/1/usr/share/text" "$src/2/var/lib/data" "$src/3/etc/app" "$src/3/opt/app"
(cd "$src/1/usr/share/text" && random_bytes text $((200 * 98304)) | base64 -w 76 | split -a 3 -d -b 131072 - text-)
(cd "$src/2/var/lib/data" && random_bytes data $((100 * 204800)) | split -a 3 -d -b 204800 - blob-)
for i in $(seq 1 110); do printf 'key%s = value %s\n' "$i" "$i" > "$src/3/etc/app/conf$i.ini"; done
random_bytes big $((5 * 1048576)) > "$src/3/opt/app/big.bin"
head -c 1048576 /dev/zero > "$src/3/opt/app/zeros.bin"
layer "$src/1"; layer "$src/2"; layer "$src/3"
printf '{"created":"2026-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(dpkg --print-architecture 2>/dev/null || echo amd64)" "$diffs" > "$work/config.json"
config_hex=$(put "$work/config.json"); config_size=$(stat -c %s "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$config_hex" "$config_size" "$descs" > "$work/manifest.json"
manifest_hex=$(put "$work/manifest.json"); manifest_size=$(stat -c %s "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest_hex" "$manifest_size" > "$large/index.json"
rm -rf "$src"

# -------------------------------------------------------------- registry
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg="127.0.0.1:$port"
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $reg}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 & reg_pid=$!
for _ in $(seq 100); do curl -fs "http://$reg/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://$reg/v2/" >/dev/null || { cat "$work/registry.log"; exit 1; }
skopeo copy -q --dest-tls-verify=false "oci:$work/sample:1.0" "docker://$reg/sample/tool:1.0"
skopeo copy -q --dest-tls-verify=false "oci:$large:latest" "docker://$reg/bench/large:latest"

size_of() { du -sh --apparent-size "$1" | cut -f1; }
echo "large image: $(find "$large/blobs" -type f | wc -l) blobs, $(size_of "$large/blobs") compressed"

# ----------------------------------------------------------------- timing
results=()
for img in sample/tool:1.0 bench/large:latest; do
  name=${img%%/*}; [ "$name" = bench ] && name=large
  ref="$reg/$img"
  store="$work/store" oci="$work/oci" bundle="$work/bundle"
  result="$work/result-$name.md"
  echo
  echo "== $name ($ref)"
  hyperfine --runs "$runs" --warmup 1 --export-markdown "$result" \
    --command-name "lstore pull ($name)" \
    --prepare "rm -rf '$store'" \
    "'$lstore_bin' --root '$store' pull -q '$ref'" \
    --command-name "skopeo copy + umoci unpack ($name)" \
    --prepare "rm -rf '$oci' '$bundle'" \
    "skopeo copy -q --src-tls-verify=false 'docker://$ref' 'oci:$oci:x' && umoci unpack --image '$oci:x' '$bundle' >/dev/null" \
    --command-name "skopeo copy alone ($name)" \
    --prepare "rm -rf '$oci'" \
    "skopeo copy -q --src-tls-verify=false 'docker://$ref' 'oci:$oci:x'"
  results+=("$result")
  # What each side produced, checked once (same files, same content).
  rm -rf "$store" "$oci" "$bundle"
  "$lstore_bin" --root "$store" pull -q "$ref" >/dev/null
  skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$oci:x"
  umoci unpack --image "$oci:x" "$bundle" >/dev/null
  mnt="$work/mnt"; mkdir -p "$mnt"
  "$lstore_bin" --root "$store" mount "$ref" "$mnt" >/dev/null
  if diff -r --no-dereference "$mnt" "$bundle/rootfs" >/dev/null; then
    echo "check: lstore mount and umoci rootfs have the same content"
  else
    echo "check: CONTENT DIFFERS between lstore mount and umoci rootfs" >&2
  fi
  "$lstore_bin" --root "$store" umount "$mnt"
  rm -rf "$store" "$oci" "$bundle"
done

echo
echo "== results (hyperfine, $runs runs, tmpfs)"
for md in "${results[@]}"; do cat "$md"; echo; done | tee "${out:-/dev/null}"
