# The benchmark corpus's layers and OCI layouts, shared by
# scripts/bench-compare.sh and scripts/bench-serve.sh (sourced, not run).
# Callers set C (the corpus folder), R (where logs go) and work (a scratch
# folder for temporary files) before calling these functions.

mirror=$(awk '/^URIs:/ { print $2; exit } /^deb / { print $2; exit }' \
  /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)
mirror=${BENCH_MIRROR:-${mirror:-http://deb.debian.org/debian}}
base_note="debootstrap --variant=minbase bookworm"
make_base() {
  local dir="$C/base"
  if ! debootstrap --variant=minbase bookworm "$dir" "$mirror" > "$R/debootstrap.log" 2>&1; then
    # Without debootstrap: the packages of priority "required" (what
    # minbase installs), unpacked with dpkg -x.
    bench_log "debootstrap failed (see $R/debootstrap.log); using dpkg -x of required packages"
    base_note="dpkg -x of bookworm's priority-required packages (debootstrap failed)"
    rm -rf "$dir" && mkdir -p "$dir" "$C/debs-base"
    (cd "$C/debs-base" &&
       apt-get download -o APT::Sandbox::User=root $(dpkg-query -W -f='${Package} ${Priority}\n' | awk '$2 == "required" { print $1 }') apt >/dev/null)
    for d in "$C"/debs-base/*.deb; do dpkg -x "$d" "$dir"; done
  fi
  # What Debian's own images drop: package caches and lists.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/*
}

python_debs=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11
             libpython3.11 python3-minimal python3 libpython3-stdlib media-types libexpat1
             libffi8 libsqlite3-0 libncursesw6 libreadline8 libnsl2 libtirpc3 readline-common
             libdb5.3 libssl3 python3-pip python3-setuptools python3-wheel
             python3-pkg-resources python3-distutils python3-lib2to3)
make_python() {
  mkdir -p "$C/debs-python" "$C/python"
  (cd "$C/debs-python" && apt-get download -o APT::Sandbox::User=root "${python_debs[@]}" >/dev/null)
  for d in "$C"/debs-python/*.deb; do dpkg -x "$d" "$C/python"; done
}

# An app: some Python packages and files, a whiteout for a base file, one
# for a python file, and an opaque directory.
make_app() {
  local a="$C/app"
  mkdir -p "$a/srv/app/lib" "$a/etc" "$a/usr/share/doc" "$a/usr/bin" "$a/var/log"
  cp -a "$C/python/usr/lib/python3.11/email" "$C/python/usr/lib/python3.11/json" \
        "$C/python/usr/lib/python3.11/http" "$a/srv/app/lib/"
  printf 'import json\nprint(json.dumps({"hello": "world"}))\n' > "$a/srv/app/main.py"
  printf 'Welcome to the app image\n' > "$a/etc/issue.app"
  : > "$a/etc/.wh.motd"
  : > "$a/usr/bin/.wh.pydoc3.11"
  : > "$a/var/log/.wh.dpkg.log"
  : > "$a/usr/share/doc/.wh..wh..opq"
  printf 'docs were removed from this image\n' > "$a/usr/share/doc/README"
}

# $1 files of 0-4 KiB of text, 1,000 per folder.
make_small() {
  mkdir -p "$C/small"
  awk -v n="$1" -v dir="$C/small" 'BEGIN {
    srand(42)
    line = "lorem ipsum layer digest overlay config manifest registry index sha256 store\n"
    while (length(text) < 8192) text = text line
    for (i = 0; i < n; i++) {
      if (i % 1000 == 0) { d = sprintf("%s/usr/share/d%03d", dir, i / 1000); system("mkdir -p " d) }
      f = sprintf("%s/f%04d.txt", d, i % 1000)
      printf "%s", substr(text, 1 + int(rand() * 64), int(rand() * 4097)) > f
      close(f)
    }
  }'
}

# $1 files of $2 MiB: 512 KiB of random bytes, then 512 KiB of text, so
# that they compress roughly 2:1.
make_big() {
  mkdir -p "$C/big/opt/data"
  local text="$work/text" i j
  while [ "$(stat -c %s "$text" 2>/dev/null || echo 0)" -lt 524288 ]; do
    cat /usr/share/common-licenses/GPL-3 >> "$text"
  done
  truncate -s 512K "$text"
  for ((i = 0; i < $1; i++)); do
    for ((j = 0; j < $2; j++)); do
      head -c 512K /dev/urandom
      cat "$text"
    done > "$C/big/opt/data/blob$i.bin"
  done
}

# layer_tar DIR NAME [EXCLUDES...]: $C/tars/NAME.tar and its compressed forms.
layer_tar() {
  local dir=$1 name=$2
  shift 2
  mkdir -p "$C/tars"
  tar --numeric-owner --xattrs --xattrs-include='*' --sort=name "$@" \
      -C "$dir" -cf "$C/tars/$name.tar" .
  pigz -6 -c "$C/tars/$name.tar" > "$C/tars/$name.tar.gz"
  zstd -3 -T0 -q -c "$C/tars/$name.tar" > "$C/tars/$name.tar.zst"
}

# make_layout IMAGE COMP LAYER...: an OCI layout with one image ("latest").
make_layout() {
  local image=$1 comp=$2
  shift 2
  local l="$C/layouts/$image-$comp" ext mt diff_ids=() layers=() f d
  case "$comp" in
    gzip) ext=.gz mt=application/vnd.oci.image.layer.v1.tar+gzip ;;
    zstd) ext=.zst mt=application/vnd.oci.image.layer.v1.tar+zstd ;;
    plain) ext="" mt=application/vnd.oci.image.layer.v1.tar ;;
  esac
  mkdir -p "$l/blobs/sha256"
  for name in "$@"; do
    f="$C/tars/$name.tar$ext"
    d=$(sha256sum "$f" | cut -d' ' -f1)
    ln -f "$f" "$l/blobs/sha256/$d"
    diff_ids+=("sha256:$(cat "$C/tars/$name.tar.sha256")")
    layers+=("$(jq -cn --arg mt "$mt" --arg d "sha256:$d" --argjson s "$(stat -c %s "$f")" \
                 '{mediaType: $mt, digest: $d, size: $s}')")
  done
  local config manifest cd md
  config=$(jq -cn --argjson ids "$(printf '%s\n' "${diff_ids[@]}" | jq -R . | jq -cs .)" \
    '{architecture: "amd64", os: "linux", created: "2025-01-01T00:00:00Z",
      config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
      rootfs: {type: "layers", diff_ids: $ids}}')
  cd=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" > "$l/blobs/sha256/$cd"
  manifest=$(jq -cn --arg cd "sha256:$cd" --argjson cs "${#config}" \
    --argjson layers "$(printf '%s\n' "${layers[@]}" | jq -cs .)" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
      layers: $layers}')
  md=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
  printf '%s' "$manifest" > "$l/blobs/sha256/$md"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$l/oci-layout"
  jq -cn --arg md "sha256:$md" --argjson ms "${#manifest}" \
    '{schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: $md, size: $ms, annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' \
    > "$l/index.json"
}

# The realistic image's three layer tars (base, python, app) and their
# diff ids (NAME.tar.sha256).
make_realistic_tars() {
  make_base
  make_python
  make_app
  layer_tar "$C/base" base --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*'
  layer_tar "$C/python" python
  layer_tar "$C/app" app
  rm -rf "$C/base" "$C/python" "$C/app" "$C"/debs-*
}

# Writes NAME.tar.sha256 (the diff id) beside each layer tar.
hash_tars() {
  local t
  for t in "$C"/tars/*.tar; do sha256sum "$t" | cut -d' ' -f1 > "$t.sha256"; done
}
