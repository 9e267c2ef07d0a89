#!/usr/bin/env bash
# The main job on a sample made here (no internet): serve two images that
# share a base layer from a local docker-registry this script starts, pull
# them, list and inspect them, mount one with overlayfs, commit and push;
# then other tools on the store: `lstore serve` (skopeo, podman), podman
# reading containers-storage/, containerd through `lstore snapshotter`;
# file sharing and a store without layer blobs; a user without root;
# save and load, remove and collect garbage. Needs root (overlay mounts;
# the throwaway user).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
cargo build --locked --bins -q
lstore() { "$CARGO_TARGET_DIR/debug/lstore" --root "$ROOT" "$@"; }

demo=$(mktemp -d /var/tmp/lstore-demo.XXXXXX)
ROOT="$demo/store"
mnt="$demo/mnt"
reg_pid=""
serve_pid=""
snap_pid=""
ctrd_pid=""
podman_demo() { CONTAINERS_STORAGE_CONF="$demo/podman/storage.conf" CONTAINERS_REGISTRIES_CONF="$demo/podman/registries.conf" podman "$@"; }
podman_view() { CONTAINERS_STORAGE_CONF="$demo/podman-view/storage.conf" podman "$@"; }
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null
  if [ -n "$ctrd_pid" ]; then kill "$ctrd_pid" 2>/dev/null; wait "$ctrd_pid" 2>/dev/null || true; fi
  if [ -n "$snap_pid" ]; then kill "$snap_pid" 2>/dev/null || true; fi
  if [ -d "$demo/podman" ]; then
    podman_demo unmount --all >/dev/null 2>&1 || true
    podman_demo system reset -f >/dev/null 2>&1 || true
  fi
  if [ -d "$demo/podman-view" ]; then
    podman_view rm -af >/dev/null 2>&1 || true
  fi
  if [ -n "${user:-}" ] && id "$user" >/dev/null 2>&1; then
    pkill -KILL -u "$user" 2>/dev/null || true
    usermod --del-subuids 400000-465535 --del-subgids 400000-465535 "$user" 2>/dev/null || true
    userdel "$user" 2>/dev/null || true
  fi
  rm -rf "$demo"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ lstore %s\033[0m\n' "$*"; }

bash scripts/make-sample.sh "$demo/sample" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg="127.0.0.1:$port"
cat > "$demo/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $demo/registry}}
http: {addr: $reg}
YML
docker-registry serve "$demo/registry.yml" >"$demo/registry.log" 2>&1 & reg_pid=$!
for _ in $(seq 50); do curl -fs "http://$reg/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
for img in app:latest tool:1.0; do
  skopeo copy -q --dest-tls-verify=false "oci:$demo/sample:${img#*:}" "docker://$reg/sample/$img"
done
echo "sample: 2 images sharing a base layer, served by docker-registry at $reg; store: $ROOT"

step pull $reg/sample/app;                lstore pull "$reg/sample/app"
step pull $reg/sample/tool:1.0;           lstore pull "$reg/sample/tool:1.0"
step pull $reg/sample/app "(again)";      lstore pull "$reg/sample/app"
step images;                              lstore images
step images --format json;                lstore images --format json
step inspect $reg/sample/app;             lstore inspect "$reg/sample/app" | tee "$demo/inspect.json"
step df;                                  lstore df

mkdir -p "$mnt"
step mount $reg/sample/app "$mnt";        lstore mount "$reg/sample/app" "$mnt"
step mounts;                              lstore mounts
ls -l "$mnt" "$mnt/opt/app"
sh "$mnt/opt/app/run.sh"
echo "file1.txt deleted by the app layer's whiteout: $( [ -e "$mnt/usr/share/doc/sample/file1.txt" ] && echo present || echo absent)"
printf '\n\033[1m$ mount -t overlay overlay -o ro,lowerdir="$(lstore inspect … | jq -r .lowerdir)" (by hand)\033[0m\n'
lstore umount "$mnt"
mount -t overlay overlay -o "ro,lowerdir=$(jq -r .lowerdir "$demo/inspect.json")" "$mnt"
ls "$mnt/opt/app"; umount "$mnt"

# The write path, as the README's walkthrough: change, commit as edge,
# push, promote edge to latest.
mkdir -p "$demo/rw"
step mount --rw $reg/sample/app rw;       lstore mount --rw "$reg/sample/app" "$demo/rw"
echo "new feature" > "$demo/rw/opt/app/FEATURE"; rm "$demo/rw/etc/os-release"
step commit rw $reg/sample/app:edge;      lstore commit "$demo/rw" "$reg/sample/app:edge"
lstore umount "$demo/rw"
step push $reg/sample/app:edge;           lstore push "$reg/sample/app:edge"
step tag $reg/sample/app:edge $reg/sample/app:latest; lstore tag "$reg/sample/app:edge" "$reg/sample/app:latest"
step push $reg/sample/app:latest;         lstore push "$reg/sample/app:latest"
step images;                              lstore images

# Other tools use the store: `lstore serve` is a registry over it. skopeo
# copies an image out and pushes one in (stored through the same verified
# pipeline as a pull), and podman pulls from it with its own storage.
printf '\n\033[1m$ lstore serve --addr 127.0.0.1:0 &\033[0m\n'
coproc SERVE { exec "$CARGO_TARGET_DIR/debug/lstore" --root "$ROOT" serve --addr 127.0.0.1:0 2>"$demo/serve.log"; }
serve_pid=$SERVE_PID
read -r -t 30 listening <&"${SERVE[0]}"
echo "$listening"
srv=${listening#listening on }
printf '\n\033[1m$ skopeo copy docker://%s/sample/app:edge oci:out\033[0m\n' "$srv"
skopeo copy -q --src-tls-verify=false "docker://$srv/sample/app:edge" "oci:$demo/out:edge"
echo "manifest copied out: sha256:$(skopeo inspect --raw "oci:$demo/out:edge" | sha256sum | cut -d' ' -f1)"
echo "manifest in lstore:  $(lstore inspect "$reg/sample/app:edge" | jq -r .digest)"
printf '\n\033[1m$ skopeo copy oci:sample:tool docker://%s/pushed/tool:1.0\033[0m\n' "$srv"
skopeo copy -q --dest-tls-verify=false "oci:$demo/sample:1.0" "docker://$srv/pushed/tool:1.0"
step images "(the pushed image is stored like a pulled one)"; lstore images
if command -v podman >/dev/null; then
  mkdir -p "$demo/podman"
  cat > "$demo/podman/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$demo/podman/graph"
runroot = "$demo/podman/run"
CONF
  cat > "$demo/podman/registries.conf" <<CONF
[[registry]]
location = "$srv"
insecure = true
CONF
  printf '\n\033[1m$ podman pull %s/sample/app:edge\033[0m\n' "$srv"
  podman_demo pull -q "$srv/sample/app:edge"
  podman_demo images --digests
fi
kill -TERM "$serve_pid"; wait "$serve_pid" || true; serve_pid=""
echo "serve stopped; more: docs/serve.md (containerd, podman and Docker mirrors, pull-through)"

# podman (buildah, CRI-O) read lstore's images in place: lstore keeps
# $ROOT/containers-storage/ as a read-only containers/storage store.
if command -v podman >/dev/null; then
  mkdir -p "$demo/podman-view"
  cat > "$demo/podman-view/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$demo/podman-view/graph"
runroot = "$demo/podman-view/run"
[storage.options]
additionalimagestores = ["$ROOT/containers-storage"]
CONF
  printf '\n\033[1m$ podman images   # storage.conf: additionalimagestores = ["%s/containers-storage"]\033[0m\n' "$ROOT"
  podman_view images
  printf '\n\033[1m$ podman mount $(podman create --pull=never %s/sample/app:edge)\033[0m\n' "$reg"
  ctr_id=$(podman_view create -q --pull=never "$reg/sample/app:edge")
  view_mnt=$(podman_view mount "$ctr_id")
  echo "$view_mnt: $(cat "$view_mnt/opt/app/FEATURE")"
  echo "lower dirs: $(grep -F "$view_mnt" /proc/self/mountinfo | grep -o 'lowerdir=[^,]*')"
  echo "(each a link to a layer folder under $ROOT/overlay2: nothing copied)"
  printf '\n\033[1m$ podman save --format oci-archive -o podman-saved.tar %s/sample/app:edge\033[0m\n' "$reg"
  podman_view save -q --format oci-archive -o "$demo/podman-saved.tar" "$reg/sample/app:edge"
  echo "(each layer's exact tar rebuilt from lstore's folder and its tar-split record)"
  podman_view umount "$ctr_id" >/dev/null; podman_view rm "$ctr_id" >/dev/null
fi

# containerd keeps its layers in lstore: `lstore snapshotter` is its proxy
# snapshotter. A private containerd pulls an image lstore holds: every
# layer keeps lstore's folder.
if command -v containerd >/dev/null; then
  mkdir -p "$demo/containerd"
  printf '\n\033[1m$ lstore snapshotter --socket snapshotter.sock &\033[0m\n'
  coproc SNAP { exec "$CARGO_TARGET_DIR/debug/lstore" --root "$ROOT" snapshotter --socket "$demo/snapshotter.sock" 2>"$demo/snapshotter.log"; }
  snap_pid=$SNAP_PID
  read -r -t 30 listening <&"${SNAP[0]}"
  echo "$listening"
  cat > "$demo/containerd/config.toml" <<CONF
version = 2
root = "$demo/containerd/root"
state = "$demo/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$demo/containerd/containerd.sock"
[proxy_plugins.lstore]
  type = "snapshot"
  address = "$demo/snapshotter.sock"
CONF
  containerd --config "$demo/containerd/config.toml" >"$demo/containerd/log" 2>&1 & ctrd_pid=$!
  ctr_demo() { ctr --address "$demo/containerd/containerd.sock" -n demo "$@"; }
  for _ in $(seq 100); do ctr_demo version >/dev/null 2>&1 && break; sleep 0.1; done
  folders_before=$(ls "$ROOT/overlay2" | grep -vc '^l$')
  printf '\n\033[1m$ ctr images pull --plain-http --snapshotter lstore %s/sample/tool:1.0\033[0m\n' "$reg"
  ctr_demo images pull --plain-http --snapshotter lstore "$reg/sample/tool:1.0" >/dev/null
  ctr_demo snapshots --snapshotter lstore ls
  echo "layer folders in lstore: $folders_before before, $(ls "$ROOT/overlay2" | grep -vc '^l$') after (containerd's copies dropped)"
  printf '\n\033[1m$ ctr images rm --sync %s/sample/tool:1.0\033[0m\n' "$reg"
  ctr_demo images rm --sync "$reg/sample/tool:1.0" >/dev/null
  kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true; ctrd_pid=""
  kill -TERM "$snap_pid"; wait "$snap_pid" 2>/dev/null || true; snap_pid=""
  echo "containerd and the snapshotter stopped; more: docs/snapshotter.md"
fi
step rmi $srv/pushed/tool:1.0;            lstore rmi "$srv/pushed/tool:1.0"

step rmi $reg/sample/app:edge;            lstore rmi "$reg/sample/app:edge"

step save -o app.tar $reg/sample/app;     lstore save -o "$demo/app.tar" "$reg/sample/app"
ls -l "$demo/app.tar"
step rmi $reg/sample/app;                 lstore rmi "$reg/sample/app"
echo "layer folders left (shared base + tool): $(ls "$ROOT/overlay2" | grep -vc '^l$')"
step load -i app.tar;                     lstore load -i "$demo/app.tar"

# Space: files equal in content and metadata across layers are one inode
# (df's "Shared files" line); a store may also drop compressed layer
# blobs, their tars rebuilt from the layer folders when needed.
step config keep-layer-blobs false;       lstore config keep-layer-blobs false
step gc "(drops the layer blobs of stored layers)"; lstore gc
step df;                                  lstore df
step save -o rebuilt.tar $reg/sample/app; lstore save -o "$demo/rebuilt.tar" "$reg/sample/app"
"$CARGO_TARGET_DIR/debug/lstore" --root "$demo/store2" load -q -i "$demo/rebuilt.tar" >/dev/null
[ "$("$CARGO_TARGET_DIR/debug/lstore" --root "$demo/store2" inspect "$reg/sample/app" | jq -r .id)" = \
  "$(lstore inspect "$reg/sample/app" | jq -r .id)" ]
echo "loaded into another store: the same image id (layers rebuilt from folders + tar-split records)"
step config keep-layer-blobs true;        lstore config keep-layer-blobs true

# Without root: a user's own store under $XDG_DATA_HOME/lstore, used inside
# a user namespace mapped from /etc/subuid and /etc/subgid (as rootless
# podman), so owners survive. A throwaway user, removed at the end.
user="lstore-demo-$$" uhome="$demo/home"
mkdir -p "$uhome/run"; chmod 711 "$demo"; chmod 755 "$uhome"
useradd -M -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 -d "$uhome" -s /bin/sh "$user"
usermod --add-subuids 400000-465535 --add-subgids 400000-465535 "$user"
cp "$demo/app.tar" "$uhome/"; chown -R "$user" "$uhome"; chmod 700 "$uhome/run"
as_user() {
  runuser -u "$user" -- env HOME="$uhome" XDG_DATA_HOME="$uhome/data" XDG_RUNTIME_DIR="$uhome/run" \
    USER="$user" PATH="$CARGO_TARGET_DIR/debug:$PATH" lstore "$@"
}
ustep() { printf '\n\033[1m%s$ lstore %s\033[0m\n' "$user" "$*"; }
ustep load -i app.tar;                    as_user load -i "$uhome/app.tar"
ustep images;                             as_user images
ustep unshare sh -c "lstore mount … && ls -ln"
as_user unshare sh -c "mkdir -p '$uhome/mnt' && lstore mount '$reg/sample/app' '$uhome/mnt' && ls -ln '$uhome/mnt' | head -4 && lstore umount '$uhome/mnt'"
echo "on the host the same files belong to the user's ids: $(stat -c '%u:%g' "$uhome/data/lstore/overlay2/$(ls "$uhome/data/lstore/overlay2" | grep -v '^l$' | head -1)/diff")"
ustep rmi $reg/sample/app;                as_user rmi "$reg/sample/app"
ustep gc;                                 as_user gc
step rmi $reg/sample/app $reg/sample/tool:1.0; lstore rmi "$reg/sample/app" "$reg/sample/tool:1.0"
step gc;                                  lstore gc
echo "left in the store: $(find "$ROOT/blobs" "$ROOT/overlay2" -mindepth 1 | wc -l) entries under blobs/ and overlay2/ (blobs/sha256 and overlay2/l dirs only)"
