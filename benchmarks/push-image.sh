#!/usr/bin/env bash
# Benchmark (not a test): push the same image to a fresh repository of a local registry with
# `builder push` and with `skopeo copy`, in the same run, and time a re-push where every blob is
# already there.
#
#   ours   builder push --quiet oci:IMAGE 127.0.0.1:PORT/bench/ours-N:v1   (release build)
#   skopeo skopeo copy --preserve-digests oci:IMAGE:latest docker://127.0.0.1:PORT/bench/skopeo-N:v1
#          (--preserve-digests keeps the uncompressed weight layer as it is, as ours does)
#   again  builder push of the same image to the repository it is already in. Target: under 1 s.
# The image holds one weight file of SIZE_MB MiB of random bytes (plus the server layer). The
# registry is Debian's docker-registry on loopback with filesystem storage on the same disk.
# Targets: ours/skopeo <= 1.0 (builder no slower), re-push under one second.
# Usage: benchmarks/push-image.sh   (SIZE_MB=1536 RUNS=3 BENCH_DIR=/var/tmp/builder-push-bench)
set -euo pipefail
SIZE_MB=${SIZE_MB:-1536}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/builder-push-bench}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/setup.sh
log() { echo "== $*" >&2; }

SWIFT_FLAGS=(-c release --scratch-path .build-release -Xswiftc -target-cpu -Xswiftc haswell)
swift build "${SWIFT_FLAGS[@]}" --product builder >&2
swift build "${SWIFT_FLAGS[@]}" --product inference-server >&2
BIN=$(swift build "${SWIFT_FLAGS[@]}" --show-bin-path)

mkdir -p "$BENCH_DIR/model"
weights="$BENCH_DIR/model/model.safetensors"
if [[ ! -f $weights || $(stat -c %s "$weights") -ne $((SIZE_MB << 20)) ]]; then
  log "generating $SIZE_MB MiB of weights"
  head -c $((SIZE_MB << 20)) /dev/urandom > "$weights"
fi
echo '{"model_type":"gemma3_text"}' > "$BENCH_DIR/model/config.json"
rm -rf "$BENCH_DIR/image"
"$BIN/builder" build --quiet --model "$BENCH_DIR/model" --server "$BIN/inference-server" --output "oci:$BENCH_DIR/image" >/dev/null

port=${PORT:-5151}
registry=""
# Each timed push goes to an empty registry, so neither tool finds blobs to skip or mount (skopeo
# also remembers where it pushed blobs before, in its blob-info cache: that is cleared too).
fresh_registry() {
  [[ -n $registry ]] && { kill "$registry" 2>/dev/null || true; wait "$registry" 2>/dev/null || true; }
  rm -rf "$BENCH_DIR/registry" /var/lib/containers/cache/blob-info-cache-v1.boltdb "$HOME/.local/share/containers/cache/blob-info-cache-v1.boltdb"
  mkdir -p "$BENCH_DIR/registry"
  cat > "$BENCH_DIR/registry/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $BENCH_DIR/registry/data}}
http: {addr: 127.0.0.1:$port}
YAML
  docker-registry serve "$BENCH_DIR/registry/config.yml" >"$BENCH_DIR/registry.log" 2>&1 &
  registry=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && return; sleep 0.1; done
  echo "error: docker-registry did not start: $(cat "$BENCH_DIR/registry.log")" >&2; exit 1
}
trap '[[ -n $registry ]] && kill $registry 2>/dev/null; rm -rf "$BENCH_DIR/registry"' EXIT

now() { date +%s.%N; }
ours=() theirs=() again=()
for ((i = 1; i <= RUNS; i++)); do
  fresh_registry; sync
  t0=$(now); "$BIN/builder" push --quiet "oci:$BENCH_DIR/image" "127.0.0.1:$port/bench/ours:v1" >/dev/null; t1=$(now)
  ours+=("$(python3 -c "print($t1 - $t0)")")
  t0=$(now); "$BIN/builder" push --quiet "oci:$BENCH_DIR/image" "127.0.0.1:$port/bench/ours:v1" >/dev/null; t1=$(now)
  again+=("$(python3 -c "print($t1 - $t0)")")
  fresh_registry; sync
  t0=$(now); skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$BENCH_DIR/image:latest" "docker://127.0.0.1:$port/bench/skopeo:v1"; t1=$(now)
  theirs+=("$(python3 -c "print($t1 - $t0)")")
  log "run $i: ours ${ours[-1]}s  skopeo ${theirs[-1]}s  re-push ${again[-1]}s"
done
python3 - "$SIZE_MB" "${ours[*]}" "${theirs[*]}" "${again[*]}" <<'PY'
import sys
size = float(sys.argv[1])
o, s, a = (min(map(float, x.split())) for x in sys.argv[2:5])
print(f"push benchmark: {size:.0f} MiB weight layer + server layer, best of runs, local docker-registry")
print(f"{'contender':<28}{'best s':>9}{'MiB/s':>9}")
print(f"{'builder push':<28}{o:>9.3f}{size / o:>9.1f}")
print(f"{'skopeo copy':<28}{s:>9.3f}{size / s:>9.1f}")
print(f"{'builder re-push (all exist)':<28}{a:>9.3f}")
print(f"ours/skopeo = {o / s:.2f}   target <= 1.0  {'PASS' if o / s <= 1.0 else 'FAIL'}")
print(f"re-push     = {a:.3f} s  target < 1 s  {'PASS' if a < 1 else 'FAIL'}")
PY
