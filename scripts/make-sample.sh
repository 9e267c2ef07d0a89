#!/usr/bin/env bash
# Makes a small sample OCI image layout with two images that share a base
# layer: OUT/ holds `sample/app:latest` (base + app) and `sample/tool:1.0`
# (base + tool). No network needed.
set -euo pipefail
out=${1:?usage: make-sample.sh OUTDIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"

sha() { sha256sum "$1" | cut -d' ' -f1; }
# put FILE -> prints its digest hex after storing it as a blob
put() { local h; h=$(sha "$1"); cp "$1" "$out/blobs/sha256/$h"; echo "$h"; }
size() { stat -c %s "$1"; }

# layer DIR COMPRESSION -> sets L_DIGEST L_SIZE L_DIFF L_TYPE
layer() {
  local dir=$1 comp=$2 tarf="$work/l.tar"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$dir" -cf "$tarf" .
  L_DIFF=$(sha "$tarf")
  case $comp in
    gzip) gzip -n -9 -c "$tarf" > "$tarf.c"; L_TYPE=application/vnd.oci.image.layer.v1.tar+gzip ;;
    zstd) zstd -q -19 -c "$tarf" > "$tarf.c"; L_TYPE=application/vnd.oci.image.layer.v1.tar+zstd ;;
    none) cp "$tarf" "$tarf.c"; L_TYPE=application/vnd.oci.image.layer.v1.tar ;;
  esac
  L_SIZE=$(size "$tarf.c"); L_DIGEST=$(put "$tarf.c")
}

# A base layer: a tiny "distribution" with real binaries from the host.
base="$work/base"
mkdir -p "$base"/{bin,etc,usr/share/doc/sample,tmp,var/log}
chmod 1777 "$base/tmp"
cp /bin/busybox "$base/bin/" 2>/dev/null || cp /bin/ls /bin/cat "$base/bin/"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$base/etc/passwd"
printf 'NAME="lstore sample"\nVERSION_ID=1\n' > "$base/etc/os-release"
for i in $(seq 1 40); do printf 'doc %s\n' "$i" > "$base/usr/share/doc/sample/file$i.txt"; done
ln -s ../etc/os-release "$base/usr/os-release"
layer "$base" gzip; B=("$L_DIGEST" "$L_SIZE" "$L_DIFF" "$L_TYPE")

app="$work/app"; mkdir -p "$app/opt/app" "$app/usr/share/doc/sample"
printf '#!/bin/sh\necho hello from the sample app\n' > "$app/opt/app/run.sh"; chmod 755 "$app/opt/app/run.sh"
: > "$app/usr/share/doc/sample/.wh.file1.txt"     # deletes a base file

tool="$work/tool"; mkdir -p "$tool/usr/local/bin"
printf '#!/bin/sh\necho tool 1.0\n' > "$tool/usr/local/bin/tool"; chmod 755 "$tool/usr/local/bin/tool"
# The same file in the app's and the tool's layers (equal content and
# metadata): lstore keeps it once (file sharing, `lstore df`).
for d in "$app" "$tool"; do
  mkdir -p "$d/usr/share/licenses/sample"
  cp /usr/share/common-licenses/Apache-2.0 "$d/usr/share/licenses/sample/LICENSE"
  chmod 644 "$d/usr/share/licenses/sample/LICENSE"
done
layer "$app" zstd; A=("$L_DIGEST" "$L_SIZE" "$L_DIFF" "$L_TYPE")
layer "$tool" none; T=("$L_DIGEST" "$L_SIZE" "$L_DIFF" "$L_TYPE")

# image NAME L1... -> appends an index entry
entries=()
image() {
  local name=$1; shift
  local diffs="" descs="" sep=""
  for l in "$@"; do
    local -n L=$l
    diffs+="$sep\"sha256:${L[2]}\""
    descs+="$sep{\"mediaType\":\"${L[3]}\",\"digest\":\"sha256:${L[0]}\",\"size\":${L[1]}}"
    sep=","
  done
  printf '{"created":"2026-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[{"created":"2026-01-01T00:00:00Z","created_by":"make-sample.sh"}]}' \
    "$(dpkg --print-architecture 2>/dev/null || echo amd64)" "$diffs" > "$work/config.json"
  local cd cs; cd=$(put "$work/config.json"); cs=$(size "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$cd" "$cs" "$descs" > "$work/manifest.json"
  local md ms; md=$(put "$work/manifest.json"); ms=$(size "$work/manifest.json")
  entries+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$md\",\"size\":$ms,\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}")
}
image docker.io/sample/app:latest B A
image docker.io/sample/tool:1.0 B T
(IFS=,; printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "${entries[*]}") > "$out/index.json"
echo "sample layout written to $out"
