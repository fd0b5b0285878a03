#!/usr/bin/env bash
# Benchmark (not a test): `builder fetch` against Python huggingface_hub's `snapshot_download` and
# against plain curl, all three fetching the same repository from the same local Hub-protocol
# server (Tests/Scripts/hub_server.py: LFS files redirect to a second "CDN" port) in the same run.
#
#   ours    builder fetch ORG/NAME --endpoint ... --cache-dir FRESH   (release build, 8 jobs)
#   python  snapshot_download(ORG/NAME) into a fresh HF_HUB_CACHE (HF_HUB_DISABLE_XET=1)
#   curl    one `curl -L -o` per file of the same file set, one after another: the bytes alone,
#           with no listing, hashing or cache bookkeeping
# Repositories: a synthetic one with a SIZE_MB MiB model.safetensors (random bytes) and, when
# ../shared/tools/get-gemma3-270m.sh is there, the real Gemma 3 270M Hugging Face folder.
# Targets: python/ours >= 1.5 on the large repository; ours/curl <= 1.3.
# Usage: benchmarks/fetch.sh   (SIZE_MB=2048 RUNS=3 BENCH_DIR=/var/tmp/builder-fetch-bench)
set -euo pipefail
SIZE_MB=${SIZE_MB:-2048}
RUNS=${RUNS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/builder-fetch-bench}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
source scripts/lib/setup.sh
python3 -c "import huggingface_hub" 2>/dev/null || python3 -m pip install -q huggingface_hub
log() { echo "== $*" >&2; }

SWIFT_FLAGS=(-c release --scratch-path .build-release -Xswiftc -target-cpu -Xswiftc haswell)
swift build "${SWIFT_FLAGS[@]}" --product builder >&2
BIN=$(swift build "${SWIFT_FLAGS[@]}" --show-bin-path)

repos="$BENCH_DIR/repos"
mkdir -p "$repos/bench/synthetic"
weights="$repos/bench/synthetic/model.safetensors"
if [[ ! -f $weights || $(stat -c %s "$weights") -ne $((SIZE_MB << 20)) ]]; then
  log "generating $SIZE_MB MiB of weights"
  head -c $((SIZE_MB << 20)) /dev/urandom > "$weights"
fi
echo '{"model_type":"gemma3_text"}' > "$repos/bench/synthetic/config.json"
names=(bench/synthetic)
if [[ -x ../shared/tools/get-gemma3-270m.sh ]]; then
  hf=$(../shared/tools/get-gemma3-270m.sh "$BENCH_DIR/gemma" | tail -n 1)
  mkdir -p "$repos/google"
  ln -sfn "$hf" "$repos/google/gemma-3-270m"
  names+=(google/gemma-3-270m)
fi

port=${PORT:-5161}
cdn=$((port + 1))
python3 Tests/Scripts/hub_server.py --port "$port" --cdn-port "$cdn" --repos "$repos" >"$BENCH_DIR/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/__stats" >/dev/null && break; sleep 0.2; done
endpoint="http://127.0.0.1:$port"

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
results=()
for name in "${names[@]}"; do
  files=$(python3 - "$endpoint" "$name" <<'PY'
import json, sys, urllib.request
endpoint, name = sys.argv[1:]
tree = json.load(urllib.request.urlopen(f"{endpoint}/api/models/{name}/tree/main?recursive=true"))
wanted = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "model.safetensors")
print(" ".join(e["path"] for e in tree if e["type"] == "file" and e["path"] in wanted))
PY
)
  bytes=$(python3 - "$repos/$name" $files <<'PY'
import os, sys
print(sum(os.path.getsize(os.path.join(sys.argv[1], f)) for f in sys.argv[2:]))
PY
)
  for ((i = 1; i <= RUNS; i++)); do
    rm -rf "$BENCH_DIR/c-ours" "$BENCH_DIR/c-py" "$BENCH_DIR/c-curl"; sync
    t=$(now); "$BIN/builder" fetch "$name" --quiet --endpoint "$endpoint" --cache-dir "$BENCH_DIR/c-ours" >/dev/null; ours=$(since "$t")
    sync
    t=$(now)
    HF_HUB_CACHE="$BENCH_DIR/c-py" HF_ENDPOINT="$endpoint" HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1 python3 -c "
from huggingface_hub import snapshot_download
snapshot_download('$name', allow_patterns=[$(printf "'%s'," $files)])" >/dev/null
    py=$(since "$t")
    sync
    mkdir -p "$BENCH_DIR/c-curl"
    t=$(now)
    for f in $files; do curl -sfL -o "$BENCH_DIR/c-curl/${f//\//_}" "$endpoint/$name/resolve/main/$f"; done
    cu=$(since "$t")
    log "$name run $i: ours ${ours}s  python ${py}s  curl ${cu}s"
    results+=("$name $bytes $ours $py $cu")
  done
done
python3 - "${results[@]}" <<'PY'
import sys
rows = {}
for line in sys.argv[1:]:
    name, size, *t = line.split()
    rows.setdefault(name, [int(size), [], [], []])
    for k, v in enumerate(t):
        rows[name][1 + k].append(float(v))
print("fetch benchmark: best of runs, local Hub-protocol server, fresh cache each run")
print(f"{'repository':<24}{'MiB':>8}{'ours s':>9}{'python s':>10}{'curl s':>9}{'py/ours':>9}{'ours/curl':>11}")
for name, (size, o, p, c) in rows.items():
    o, p, c = min(o), min(p), min(c)
    print(f"{name:<24}{size / 2**20:>8.0f}{o:>9.3f}{p:>10.3f}{c:>9.3f}{p / o:>9.2f}{o / c:>11.2f}")
print("targets: py/ours >= 1.5 on the large repository, ours/curl <= 1.3")
PY
