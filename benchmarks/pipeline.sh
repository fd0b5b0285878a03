#!/usr/bin/env bash
# The whole pipeline on the real Gemma 3 270M (GGUF Q4_K_M + tokenizer), step by step, as `builder
# ship` runs it minus the Cloud Run deploy: fetch from a local Hub-protocol server into a fresh cache,
# build the image over scratch, push it to an empty local docker-registry, then a second build and
# push after only the server binary changed, then `builder run` from the registry with runc until
# /health is 200.
#
# Printed: wall seconds of each step and the total; the bytes that reached the registry on the first
# and on the second push (measured as the growth of the registry's storage folder, so it counts what
# was really sent and kept); the time from `builder run` to /health 200 (pull, unpack, runc start,
# model load). Target: the second push sends only the server layer, the config and the manifest, never
# the weights again (the script prints whether the second push was smaller than the weight file).
#
# Usage: benchmarks/pipeline.sh       (needs root for runc; about 2 minutes after the release build)
#   SKIP_BUILD=1   use the existing .build-bench release binaries
#   KEEP=DIR       keep the work folder (default: a temporary folder, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

if [ "${SKIP_BUILD:-}" != 1 ]; then
  swift build -c release --scratch-path .build-bench >&2
fi
bin=.build-bench/release
[ -x "$bin/builder" ] && [ -x "$bin/inference-server" ] || { echo "no release binaries in $bin: run without SKIP_BUILD" >&2; exit 1; }

gguf=$(scripts/get-model)
[ -f models/gemma-3-270m/tokenizer.json ] || bash ../shared/tools/get-gemma3-270m.sh models >&2
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  runc delete --force "bench-$$" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.3f}")' "$1"; }
port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

repo="$work/hub/google/gemma-3-270m"
mkdir -p "$repo"
ln -sfn "$(realpath "$gguf")" "$repo/$(basename "$gguf")"
cp models/gemma-3-270m/tokenizer.json models/gemma-3-270m/tokenizer_config.json models/gemma-3-270m/special_tokens_map.json "$repo/"
hub_port=$(port_free)
python3 Tests/Scripts/hub_server.py --port "$hub_port" --cdn-port "$(port_free)" --repos "$work/hub" >"$work/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$hub_port/__stats" >/dev/null && break; sleep 0.1; done

reg_port=$(port_free)
mkdir -p "$work/registry"
cat > "$work/registry/config.yml" <<YAML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry/data}}
http: {addr: 127.0.0.1:$reg_port}
YAML
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$reg_port/v2/" >/dev/null && break; sleep 0.1; done
stored() { du -sb "$work/registry/data" 2>/dev/null | cut -f1 || echo 0; }
ref="127.0.0.1:$reg_port/gemma/gemma-3-270m:bench"

total=$(now)
t=$(now)
snapshot=$(HF_ENDPOINT="http://127.0.0.1:$hub_port" HF_HUB_CACHE="$work/hf-cache" "$bin/builder" fetch google/gemma-3-270m \
  --include '*.gguf' --include 'tokenizer*' --include special_tokens_map.json 2>"$work/fetch.log")
fetch_s=$(since "$t")
t=$(now)
"$bin/builder" build --model "$snapshot" --server "$bin/inference-server" --output "oci:$work/image" >/dev/null 2>"$work/build.log"
build_s=$(since "$t")
before=$(stored)
t=$(now)
"$bin/builder" push "oci:$work/image" "$ref" >/dev/null 2>"$work/push.log"
push_s=$(since "$t")
first_bytes=$(( $(stored) - before ))
total_s=$(since "$total")

# Only the server binary changes (as after a code change): rebuild and push again.
cp "$bin/inference-server" "$work/inference-server"
printf 'a different build' >> "$work/inference-server"
t=$(now)
"$bin/builder" build --model "$snapshot" --server "$work/inference-server" --output "oci:$work/image2" >/dev/null 2>"$work/build2.log"
build2_s=$(since "$t")
before=$(stored)
t=$(now)
"$bin/builder" push "oci:$work/image2" "$ref" >/dev/null 2>"$work/push2.log"
push2_s=$(since "$t")
second_bytes=$(( $(stored) - before ))

serve_port=$(port_free)
t=$(now)
XDG_CACHE_HOME="$work/cache" "$bin/builder" run "$ref" --port "$serve_port" --name "bench-$$" >"$work/run.log" 2>&1 &
run_pid=$!
pids+=($run_pid)
healthy=no
for _ in $(seq 1200); do
  if curl -sf "http://127.0.0.1:$serve_port/health" >/dev/null; then healthy=yes; break; fi
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.05
done
health_s=$(since "$t")
runc kill "bench-$$" TERM >/dev/null 2>&1 || true
wait "$run_pid" 2>/dev/null || true
[ "$healthy" = yes ] || { echo "the container never became healthy: $(tail -5 "$work/run.log")" >&2; exit 1; }

weights=$(stat -L -c %s "$gguf")
printf '\nGemma 3 270M (GGUF %s MB + tokenizer), local Hub server and docker-registry on loopback, release binaries\n' "$((weights / 1000000))"
printf '%-42s %8s\n' "step" "seconds"
printf '%-42s %8.2f\n' "fetch (fresh cache, sha256 verified)" "$fetch_s" "build (image over scratch)" "$build_s" \
  "push (empty registry)" "$push_s" "total, first ship without deploy" "$total_s" \
  "build after a server-only change" "$build2_s" "push after a server-only change" "$push2_s" \
  "builder run from the registry to /health 200" "$health_s"
printf 'bytes stored by the registry: first push %s, second push %s (weights %s)\n' "$first_bytes" "$second_bytes" "$weights"
if [ "$second_bytes" -lt "$weights" ]; then
  echo "second push: the weights were not sent again (target met)"
else
  echo "second push: as large as the weights (target NOT met)"
fi
