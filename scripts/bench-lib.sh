# Helpers shared by scripts/bench-*.sh (sourced, not run).
#
# Every benchmark store lives on a filesystem made for it: a loop-mounted
# ext4 image (the default) or a tmpfs. The root filesystem of a build
# machine can be many times slower than ext4 at creating and deleting files,
# which would measure the machine, not the store.

bench_log() { printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2; }
bench_die() { bench_log "error: $*"; exit 1; }

bench_need_root() {
  [ "$(id -u)" -eq 0 ] || bench_die "run as root (loop mounts, dropping the page cache, overlay mounts)"
}

# Installs the Debian packages named that are missing.
bench_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  bench_log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The lstore binary: $LSTORE_BIN, else built from this checkout (dev profile,
# the project's only one).
bench_lstore_bin() {
  if [ -n "${LSTORE_BIN:-}" ]; then
    [ -x "$LSTORE_BIN" ] || bench_die "LSTORE_BIN=$LSTORE_BIN is not executable"
    echo "$LSTORE_BIN"
    return
  fi
  local top
  top="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
  (cd "$top" && cargo build --locked --bins -q) >&2 || bench_die "cargo build failed"
  echo "$CARGO_TARGET_DIR/debug/lstore"
}

# bench_scratch_mount KIND SIZE DIR: mounts a fresh filesystem of SIZE
# (e.g. 8G) on DIR. KIND is ext4 (a sparse image file under
# $BENCH_IMAGE_DIR, default /var/tmp, on a direct-I/O loop device) or tmpfs.
BENCH_MOUNTS=()
BENCH_IMAGES=()
bench_scratch_mount() {
  local kind=$1 size=$2 dir=$3 img
  mkdir -p "$dir"
  case "$kind" in
    ext4)
      img=$(mktemp "${BENCH_IMAGE_DIR:-/var/tmp}/lstore-bench.XXXXXX.img")
      BENCH_IMAGES+=("$img")
      truncate -s "$size" "$img"
      mkfs.ext4 -q -F "$img"
      # Direct I/O: a buffered loop device only moves write-back into the
      # page cache of its backing file, so a syncfs would not wait for the
      # disk as it does on a real one. (The loop device is released with the
      # mount: autoclear.)
      local dev
      dev=$(losetup --find --show --direct-io=on "$img")
      mount "$dev" "$dir"
      losetup --detach "$dev" 2>/dev/null || true
      ;;
    tmpfs) mount -t tmpfs -o "size=$size" tmpfs "$dir" ;;
    *) bench_die "unknown filesystem kind $kind (ext4 or tmpfs)" ;;
  esac
  BENCH_MOUNTS+=("$dir")
}

# Unmounts what bench_scratch_mount mounted (and anything mounted below it)
# and deletes the image files.
bench_scratch_cleanup() {
  local m i
  for ((i = ${#BENCH_MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${BENCH_MOUNTS[$i]}
    # Overlay or bind mounts a tool left below the scratch folder go first.
    awk -v m="$m/" 'index($2, m) == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r sub; do umount -l "$sub" 2>/dev/null || true; done
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    rmdir "$m" 2>/dev/null || true
  done
  for i in "${BENCH_IMAGES[@]}"; do rm -f "$i"; done
  BENCH_MOUNTS=()
  BENCH_IMAGES=()
}

# What the data sits on, for the report: "ext4 (loop image)" or "tmpfs".
bench_fs_of() {
  local t
  t=$(stat -f -c %T "$1")
  case "$t" in
    ext2/ext3) echo "ext4 (an image file on a direct-I/O loop device)" ;;
    *) echo "$t" ;;
  esac
}

# Cold caches: write back, then drop the page, dentry and inode caches.
bench_drop_caches() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

# A free TCP port on loopback: a connect that is refused means nobody listens.
bench_free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  bench_die "no free port found"
}

# bench_registry_start DIR PORT [quiet]: a docker-registry on 127.0.0.1:PORT
# that stores under DIR and logs every request to DIR.log (with "quiet":
# errors only, no access log, for when it is what is measured). Sets
# BENCH_REGISTRY_PID.
bench_registry_start() {
  local dir=$1 port=$2 log="{level: info, formatter: text}"
  [ "${3:-}" = quiet ] && log="{level: error, accesslog: {disabled: true}}"
  mkdir -p "$dir"
  cat > "$dir.yml" <<YML
version: 0.1
log: $log
storage: {filesystem: {rootdirectory: $dir}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$dir.yml" > "$dir.log" 2>&1 &
  BENCH_REGISTRY_PID=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  bench_die "docker-registry did not start (see $dir.log)"
}

# Prints "seconds peak-RSS-KiB" of one run of a command (GNU time).
bench_time_once() {
  local out
  out=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
  cat "$out"
  rm -f "$out"
}

# Numbers for people: 1234567 -> 1.23 M.
bench_si() {
  awk -v n="$1" 'BEGIN { u[2] = "k"; u[3] = "M"; u[4] = "G"; i = 1;
    while (n >= 1000 && i < 4) { n /= 1000; i++ }
    if (i == 1) printf "%d", n; else printf "%.2f %s", n, u[i] }'
}
