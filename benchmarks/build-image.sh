#!/usr/bin/env bash
# Benchmark (not a test): how fast does `builder build` turn a large weight file into an OCI layout,
# compared with the I/O floor and with umoci?
#
# What is measured, each RUNS times, best (minimum) wall time kept:
#   floor  `cat model.safetensors > out/floor.bin`: read the weights once and write them once to the
#          output disk. No image builder can do less, since an uncompressed layer is the file's bytes
#          (plus a tar header) copied into blobs/; hashing and tar framing are the only extra work.
#   ours   `builder build --quiet --compression none` (release build, -target-cpu haswell) of a model
#          folder holding config.json, tokenizer.json and one model.safetensors of SIZE_MB MiB of random
#          bytes, with the inference-server as the server. No layer is compressed, so this should stay
#          close to the floor. Target: ours/floor <= 1.3.
#   ours (default flags)  the same with the default `--compression gzip` for the server and small-file
#          layers (weights stay uncompressed): shown for information, since gzip of the server layer
#          (the executable plus the Swift runtime, ~80 MB) is CPU time the floor does not pay.
#   umoci  `umoci insert` of the same file into a fresh layout (`umoci init` and `umoci new` run
#          before the clock starts). Debian's umoci 0.4.7 always gzips layers and has no flag to turn
#          that off, so this is "a common tool as it ships", not a like-for-like uncompressed copy.
#
# Fairness:
#   - Nothing is dropped from the page cache: the weight file is generated (or re-read) before the
#     first timing and is warm in the page cache for all three contenders alike. Reads are therefore
#     mostly memory copies; the differences come from writing, hashing, tar and compression.
#   - No contender fsyncs inside its timed region (cat doesn't; the numbers are fsync-free for all).
#     `sync` runs after every run, outside the timing, so dirty pages from one run don't slow the next.
#   - Output goes under BENCH_DIR, which must be a real disk (not tmpfs): the same disk as /work.
#
# Usage: benchmarks/build-image.sh          (from anywhere; it works in the repository root)
#   SIZE_MB=1536   size of the random weight file in MiB
#   RUNS=3         timed runs per contender
#   BENCH_DIR=/var/tmp/builder-bench   work folder (model/ is kept and reused; out/ is rewritten)
#
# Release binaries go to .build-release/ (a separate scratch path), never the developers' .build/.
# Exits 0 whether or not the target is met; the table says PASS or FAIL.
set -euo pipefail

SIZE_MB=${SIZE_MB:-1536}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/builder-bench}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

log() { echo "== $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# --- 1. Release binaries, in their own scratch path -------------------------------------------------
SCRATCH=.build-release
SWIFT_FLAGS=(-c release --scratch-path "$SCRATCH" -Xswiftc -target-cpu -Xswiftc haswell)
for product in builder inference-server; do
    log "swift build ${SWIFT_FLAGS[*]} --product $product"
    swift build "${SWIFT_FLAGS[@]}" --product "$product" >&2
done
BIN_DIR=$(swift build "${SWIFT_FLAGS[@]}" --show-bin-path)
BUILDER="$BIN_DIR/builder"
SERVER="$BIN_DIR/inference-server"
[[ -x $BUILDER && -x $SERVER ]] || die "release binaries missing in $BIN_DIR"

# --- umoci ---------------------------------------------------------------------------------------
if ! command -v umoci >/dev/null; then
    log "installing umoci"
    apt-get install -y umoci >&2 || { apt-get update >&2 && apt-get install -y umoci >&2; }
fi

# --- 2. Work folder and model ----------------------------------------------------------------------
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
fstype=$(stat -f -c %T "$BENCH_DIR")
[[ $fstype != tmpfs && $fstype != ramfs ]] || die "$BENCH_DIR is on $fstype; put BENCH_DIR on a real disk"
log "work folder $BENCH_DIR ($fstype):"
df -h "$BENCH_DIR" >&2

MODEL="$BENCH_DIR/model"
WEIGHTS="$MODEL/model.safetensors"
OUT="$BENCH_DIR/out"
mkdir -p "$MODEL" "$OUT"
echo '{"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}' > "$MODEL/config.json"
echo '{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}' > "$MODEL/tokenizer.json"

want_bytes=$((SIZE_MB * 1024 * 1024))
if [[ -f $WEIGHTS && $(stat -c %s "$WEIGHTS") -eq $want_bytes ]]; then
    log "reusing $WEIGHTS ($SIZE_MB MiB)"
else
    log "generating $WEIGHTS ($SIZE_MB MiB of random bytes)"
    head -c "$want_bytes" /dev/urandom > "$WEIGHTS.tmp"
    mv "$WEIGHTS.tmp" "$WEIGHTS"
fi
cat "$WEIGHTS" > /dev/null   # warm the page cache, for everyone alike
sync

# --- 3. Timed runs ---------------------------------------------------------------------------------
now() { date +%s.%N; }
# elapsed START END -> seconds
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.6f}')" "$1" "$2"; }

declare -a T_FLOOR=() T_OURS=() T_DEFAULT=() T_UMOCI=()
DIGEST=""

for ((run = 1; run <= RUNS; run++)); do
    # a. floor
    rm -f "$OUT/floor.bin"; sync
    t0=$(now); cat "$WEIGHTS" > "$OUT/floor.bin"; t1=$(now)
    T_FLOOR+=("$(elapsed "$t0" "$t1")")
    rm -f "$OUT/floor.bin"; sync

    # b. ours
    rm -rf "$OUT/ours"; sync
    t0=$(now)
    DIGEST=$("$BUILDER" build --quiet --compression none --model "$MODEL" --server "$SERVER" --output "oci:$OUT/ours") \
        || die "builder build failed (run $run)"
    t1=$(now)
    T_OURS+=("$(elapsed "$t0" "$t1")")
    [[ $DIGEST =~ ^sha256:[0-9a-f]{64}$ ]] || die "builder printed '$DIGEST', not a sha256: digest"
    [[ -f $OUT/ours/blobs/sha256/${DIGEST#sha256:} ]] || die "manifest $DIGEST is not in $OUT/ours/blobs"
    sync

    # b'. ours with the default flags
    rm -rf "$OUT/default"; sync
    t0=$(now)
    "$BUILDER" build --quiet --model "$MODEL" --server "$SERVER" --output "oci:$OUT/default" >/dev/null \
        || die "builder build (default flags) failed (run $run)"
    t1=$(now)
    T_DEFAULT+=("$(elapsed "$t0" "$t1")")
    rm -rf "$OUT/default"; sync

    # c. umoci (init/new untimed; only the insert is timed)
    rm -rf "$OUT/umoci"
    umoci init --layout "$OUT/umoci"
    umoci new --image "$OUT/umoci:b"
    sync
    t0=$(now)
    umoci insert --image "$OUT/umoci:b" "$WEIGHTS" /model/model.safetensors
    t1=$(now)
    T_UMOCI+=("$(elapsed "$t0" "$t1")")
    sync

    log "run $run/$RUNS: floor ${T_FLOOR[-1]}s  ours ${T_OURS[-1]}s  default ${T_DEFAULT[-1]}s  umoci ${T_UMOCI[-1]}s"
done
rm -rf "$OUT/umoci"   # keep out/ours for inspection

# --- 4. Table --------------------------------------------------------------------------------------
echo "builder build benchmark: ${SIZE_MB} MiB weight file, best of $RUNS runs, page cache warm, no fsync"
echo "ours manifest: $DIGEST"
python3 - "$SIZE_MB" "${T_FLOOR[*]}" "${T_OURS[*]}" "${T_DEFAULT[*]}" "${T_UMOCI[*]}" <<'EOF'
import sys
size_mb = float(sys.argv[1])
best = {name: min(map(float, times.split())) for name, times in
        zip(("floor (cat)", "ours (no compression)", "ours (default flags)", "umoci insert (gzip)"), sys.argv[2:6])}
print(f"{'contender':<24}{'best s':>10}{'MiB/s':>10}")
for name, s in best.items():
    print(f"{name:<24}{s:>10.3f}{size_mb / s:>10.1f}")
floor, ours, default, umoci = best.values()
print(f"ours/floor  = {ours / floor:.2f}")
print(f"ours (default flags)/floor = {default / floor:.2f}")
print(f"umoci/floor = {umoci / floor:.2f}")
print(f"umoci/ours  = {umoci / ours:.2f}")
print(f"target: ours/floor <= 1.3  {'PASS' if ours / floor <= 1.3 else 'FAIL'}")
EOF
