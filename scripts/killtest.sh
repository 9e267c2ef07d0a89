#!/usr/bin/env bash
# The kill loop of tests/reliability.rs, as long as you like: `load`, `pull`
# (from a docker-registry started on loopback), `rmi` and `gc` on one store,
# each SIGKILLed after a random delay, then `fsck` (or `fsck --repair` + `gc`)
# and a mount-and-compare of every image a finished command stored.
#
#   scripts/killtest.sh [ITERATIONS] [SEED]     (defaults: 500, random)
#
# Prints the seed (to repeat a failing run) and a last line
# "N kills survived, M lost". Needs root (mounts), docker-registry, skopeo,
# umoci. Exit status: 0 when nothing was lost and fsck was always clean.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/lstore/target}"
iterations="${1:-500}"
seed="${2:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}"
case "$iterations$seed" in *[!0-9]*) echo "usage: $0 [ITERATIONS] [SEED]" >&2; exit 2;; esac
echo "killtest: $iterations iterations, seed $seed"
log=$(mktemp /tmp/lstore-killtest.XXXXXX.log)
status=0
LSTORE_KILL_ITERATIONS="$iterations" LSTORE_KILL_SEED="$seed" \
  cargo test --locked -q --test reliability kill_anything_at_any_point -- --nocapture \
  >"$log" 2>&1 || status=$?
grep -E '^(kill loop|  fsck after)' "$log" || true
summary=$(grep -E '^[0-9]+ kills survived, [0-9]+ lost$' "$log" | tail -1 || true)
if [ "$status" != 0 ] || [ -z "$summary" ]; then
  tail -40 "$log" >&2
  echo "killtest: FAILED (seed $seed; full log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "$summary"
