#!/usr/bin/env bash
# The main job on a sample made here (no internet): load two images that
# share a base layer, list and inspect them, mount one with overlayfs,
# remove them and collect garbage. Needs root (overlay mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
cargo build --locked --bins -q
lstore() { "$CARGO_TARGET_DIR/debug/lstore" --root "$ROOT" "$@"; }

demo=$(mktemp -d /var/tmp/lstore-demo.XXXXXX)
ROOT="$demo/store"
mnt="$demo/mnt"
cleanup() { mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"; rm -rf "$demo"; }
trap cleanup EXIT
step() { printf '\n\033[1m$ lstore %s\033[0m\n' "$*"; }

bash scripts/make-sample.sh "$demo/sample" >/dev/null
echo "sample OCI layout: $demo/sample (2 images sharing a base layer); store: $ROOT"

step load -i sample;                      lstore load -i "$demo/sample"
step images;                              lstore images
step images --format json;                lstore images --format json
step inspect sample/app;                  lstore inspect sample/app | tee "$demo/inspect.json"
step df;                                  lstore df

lower=$(jq -r .lowerdir "$demo/inspect.json")
mkdir -p "$mnt"
printf '\n\033[1m$ mount -t overlay overlay -o lowerdir=<inspect .lowerdir> %s\033[0m\n' "$mnt"
mount -t overlay overlay -o "ro,lowerdir=$lower" "$mnt"
ls -l "$mnt" "$mnt/opt/app"
sh "$mnt/opt/app/run.sh"
echo "file1.txt deleted by the app layer's whiteout: $( [ -e "$mnt/usr/share/doc/sample/file1.txt" ] && echo present || echo absent)"
umount "$mnt"

step rmi sample/app;                      lstore rmi sample/app
echo "layer folders left (shared base + tool): $(ls "$ROOT/overlay2" | grep -vc '^l$')"
step rmi sample/tool:1.0;                 lstore rmi sample/tool:1.0
step gc;                                  lstore gc
echo "left in the store: $(find "$ROOT/blobs" "$ROOT/overlay2" -mindepth 1 | wc -l) entries under blobs/ and overlay2/ (blobs/sha256 and overlay2/l dirs only)"
