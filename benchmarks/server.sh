#!/usr/bin/env bash
# Serving benchmark: our `inference-server serve` (continuous batching) against llama.cpp's server
# (llama-cpp-python[server], `python3 -m llama_cpp.server`) on the same Gemma 3 270M Q4_K_M GGUF,
# same machine, same run.
#
# What is measured, per server, for C = 1, 4, 16 concurrent streams (benchmarks/server_load.py):
#   - aggregate tok/s : C clients each send streaming POST /v1/completions requests back to back for
#                       DURATION seconds (a fixed 22-token English prompt, <bos> included; max_tokens 64, temperature 0);
#                       generated tokens whose SSE chunk arrived inside the window / DURATION. Requests
#                       still running at the end of the window finish (so the server is idle before
#                       the next C) but their later tokens are not counted. Tokens are counted per SSE
#                       content chunk and made exact per request from usage.completion_tokens (ours:
#                       stream_options.include_usage) or, for finish_reason "length", from max_tokens.
#   - TTFT p50/p99    : from request send (before connect) to the first SSE chunk with text, over every
#                       request started in the window; queueing inside the server is included.
#   - checks          : HTTP status, SSE framing, JSON, error events, one finish_reason, [DONE]; the
#                       longest gap between chunks of one request (stalls); distinct greedy texts
#                       (should be 1); for ours, /metrics' generation token counter as a cross-check;
#                       CPU cores used by the server, the load client and every other process during
#                       each C (from /proc), with a warning when other work on the machine skews it.
# Both servers get the same prompt text (each tokenizes it itself, with <bos>). Ours gets
# "ignore_eos": true; llama-cpp-python's server has no ignore_eos field, so the prompt was chosen so
# that greedy decoding runs the full 64 tokens without end-of-sequence on both (the per-request
# token counts and finish reasons are printed so that this can be seen).
#
# The peer: llama-cpp-python's server runs ONE request at a time (a single Llama object behind a
# lock, no parallel slots, no batching across requests); concurrent requests queue, so its aggregate
# tok/s stays at its single-stream rate and its TTFT grows with C. That is the server the issue
# names. It is started with --interrupt_requests False (its default, True, cuts the running stream
# whenever another request arrives), --logits_all False (no prompt logits: ours computes none either),
# n_threads = n_threads_batch = nproc, n_ctx 1024, --verbose False; its requests carry
# "repeat_penalty": 1.0 (its server's default is 1.1, which is not greedy decoding and costs time).
# Ours: --max-num-seqs 16 (16 sequences decoded together per step), default thread count.
# The servers run one after the other, never both loaded at once.
#
# Target (informational; the script exits 0 whether or not it is met, non-zero only when something
# fails to run): ours at 16 streams >= 3x ours at 1 stream, and ours ahead of llama.cpp at every C.
#
# Usage: benchmarks/server.sh          (from anywhere; about 4 minutes with the default DURATION)
#   DURATION=S       measurement window per concurrency per server (default 20)
#   CONCURRENCY=L    comma list (default 1,4,16)
#   MAX_TOKENS=N     max_tokens per request (default 64)
#   MODELS=DIR       weights folder (default: models, relative to the repository root)
#   SKIP_BUILD=1     use the existing .build-bench release binary (else: swift build -c release
#                    --product inference-server --scratch-path .build-bench)
#   KEEP=DIR         keep the server logs and per-server JSON results in DIR
#   SAMPLING=JSON    sampling fields for every request of both servers instead of greedy decoding,
#                    e.g. '{"temperature": 0.8, "top_k": 64, "top_p": 0.95}' (texts then differ from
#                    request to request; on the CPU our server draws on the host, as vLLM does)
# Time: llama-cpp-python serves the 16-stream requests one by one, so its C=16 window is followed
# by a drain of up to ~16 requests (about 16 x 64 / its single-stream tok/s seconds); requests still
# running 300 s after a window are a failure.
# Needs: swift (on PATH or /opt/swift/usr/bin), python3, llama-cpp-python with its server extras
# (the extras are installed with pip when missing; llama-cpp-python itself too, which builds
# llama.cpp from source).
set -euo pipefail

cd "$(dirname "$0")/.."
source benchmarks/lib.sh
DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-1,4,16}
MAX_TOKENS=${MAX_TOKENS:-64}
SAMPLING=${SAMPLING:-}
MODELS=${MODELS:-models}
NPROC=$(nproc)
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

GGUF="$MODELS/gemma-3-270m-q4_k_m.gguf"
HF="$MODELS/gemma-3-270m"
if [ ! -s "$GGUF" ]; then
  scripts/get-model "$MODELS" >/dev/null
fi
if [ ! -s "$HF/tokenizer.json" ]; then
  bash ../shared/tools/get-gemma3-270m.sh "$MODELS" >/dev/null
fi

# Our server.
build_inference_server

# llama.cpp's server through llama-cpp-python.
ensure_llama_cpp_python
if ! python3 -c 'import uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings' 2>/dev/null; then
  echo "installing llama-cpp-python[server] extras" >&2
  python3 -m pip install -q "llama-cpp-python[server]==$LLAMA_VERSION" >&2
fi

work=$(mktemp -d)
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_for NAME URL-PATH PORT LOG: until GET answers 200, the server dies, or 180 s pass.
wait_for() {
  local name=$1 path=$2 port=$3 log=$4
  for _ in $(seq 1 360); do
    if ! kill -0 "$PID" 2>/dev/null; then
      echo "$name exited before it was ready; its log:" >&2; tail -n 40 "$log" >&2; exit 1
    fi
    if python3 - "$port" "$path" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    sleep 0.5
  done
  echo "$name was not ready after 180 s; its log:" >&2; tail -n 40 "$log" >&2; exit 1
}

stop_server() {
  echo "[${SECONDS}s] stopping the server" >&2
  kill "$PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PID" 2>/dev/null; then echo "the server did not stop in 10 s after SIGTERM; killing it" >&2; kill -9 "$PID" 2>/dev/null || true; fi
  wait "$PID" 2>/dev/null || true
  PID=""
  echo "[${SECONDS}s] stopped" >&2
}

LOAD=(python3 benchmarks/server_load.py --duration "$DURATION" --concurrency "$CONCURRENCY" --max-tokens "$MAX_TOKENS"
  --model gemma)

# 1. Ours.
PORT=$(free_port)
echo "[${SECONDS}s] starting ours on 127.0.0.1:$PORT" >&2
"$SERVER" serve --model "$GGUF" --tokenizer "$HF" --host 127.0.0.1 --port "$PORT" --served-model-name gemma \
  --max-num-seqs 16 >"$work/ours.log" 2>&1 &
PID=$!
wait_for ours /health "$PORT" "$work/ours.log"
echo "[${SECONDS}s] ours is ready" >&2
"${LOAD[@]}" --port "$PORT" --label ours --out "$work/ours.json" --ignore-eos --include-usage --metrics \
  --server-pid "$PID" --extra "${SAMPLING:-{\}}"
stop_server

# 2. llama.cpp (llama-cpp-python's server).
PORT=$(free_port)
echo "[${SECONDS}s] starting llama-cpp-python $LLAMA_VERSION server on 127.0.0.1:$PORT" >&2
python3 -m llama_cpp.server --model "$GGUF" --model_alias gemma --host 127.0.0.1 --port "$PORT" \
  --n_ctx 1024 --n_threads "$NPROC" --n_threads_batch "$NPROC" --interrupt_requests False \
  --logits_all False --verbose False >"$work/llama.log" 2>&1 &
PID=$!
wait_for llama.cpp /v1/models "$PORT" "$work/llama.log"
echo "[${SECONDS}s] llama.cpp is ready" >&2
"${LOAD[@]}" --port "$PORT" --label llama.cpp --out "$work/llama.json" --server-pid "$PID" \
  --extra "$(python3 -c 'import json, sys; print(json.dumps({"repeat_penalty": 1.0, **json.loads(sys.argv[1] or "{}")}))' "$SAMPLING")"
stop_server

# Anything our server logged (errors, warnings) is worth seeing.
if grep -qiE 'error|warn|fatal|crash' "$work/ours.log"; then
  echo "--- our server's log has error/warning lines (first 20):" >&2
  grep -iE 'error|warn|fatal|crash' "$work/ours.log" | head -n 20 >&2
fi

# What the hardware allows, measured now that both servers are stopped: the f32 multiply-add peak,
# the int8 and bf16 ones (vpdpbusd, vdpbf16ps, on CPUs with AVX-512 VNNI and BF16, where the engine
# uses them) and the memory read
# bandwidth of these cores, and the floors they put under a decode step (the longer of reading every
# weight once and N tokens' multiply-adds at their instructions' peaks). Informational.
echo "[${SECONDS}s] measuring this machine's peaks (bench-batch --peak)" >&2
"$SERVER" bench-batch --model "$GGUF" --tokenizer "$HF" --sizes "$CONCURRENCY" --steps 0 --peak >"$work/peak.txt" 2>&1 \
  || { echo "bench-batch --peak failed:" >&2; cat "$work/peak.txt" >&2; : >"$work/peak.txt"; }

python3 - "$work/ours.json" "$work/llama.json" "$DURATION" "$NPROC" "$LLAMA_VERSION" "$MAX_TOKENS" "$work/peak.txt" "$SAMPLING" <<'PY'
import json, re, sys
ours, llama = (json.load(open(p)) for p in sys.argv[1:3])
duration, nproc, version, max_tokens = sys.argv[3:7]
peak = open(sys.argv[7]).read()
L = {lv["concurrency"]: lv for lv in llama["levels"]}
O = {lv["concurrency"]: lv for lv in ours["levels"]}
ms = lambda v: "n/a" if v is None else f"{v * 1000:.0f}"
sampling = sys.argv[8] if len(sys.argv) > 8 and sys.argv[8] else "temperature 0"
print(f"Gemma 3 270M Q4_K_M, streaming /v1/completions, max_tokens {max_tokens}, {sampling}, "
      f"{duration} s per concurrency, {nproc} cores; llama.cpp = llama-cpp-python {version} server "
      f"(one request at a time)")
print(f"prompt: {ours['prompt']!r}")
head = (f"{'C':>3} {'ours tok/s':>10} {'llama tok/s':>11} {'ours/llama':>10} {'ours TTFT p50/p99 ms':>21} "
        f"{'llama TTFT p50/p99 ms':>22} {'ours req':>8} {'llama req':>9}")
print(head)
print("-" * len(head))
for c in sorted(O):
    o, l = O[c], L.get(c)
    ratio = o["tok_s"] / l["tok_s"] if l and l["tok_s"] else float("nan")
    print(f"{c:>3} {o['tok_s']:>10.1f} {l['tok_s'] if l else float('nan'):>11.1f} {ratio:>9.2f}x "
          f"{ms(o['ttft_p50']) + ' / ' + ms(o['ttft_p99']):>21} "
          f"{(ms(l['ttft_p50']) + ' / ' + ms(l['ttft_p99'])) if l else 'n/a':>22} "
          f"{o['requests']:>8} {l['requests'] if l else 0:>9}")
print()
for name, R in (("ours", O), ("llama.cpp", L)):
    for c in sorted(R):
        lv = R[c]
        extra = ""
        if "server_generation_tokens" in lv:
            a = lv.get("server_after", {})
            extra = (f"; server /metrics counted {lv['server_generation_tokens']:.0f} generated (incl. drain), "
                     f"then {a.get('vllm:num_requests_running', 0):.0f} running / "
                     f"{a.get('vllm:num_requests_waiting', 0):.0f} waiting")
        print(f"{name:>9} C={c:<2}: {lv['completed']} completed, {lv['failed']} failed; tokens/request "
              f"{lv['tokens_per_request']}; finish {lv['finish_reasons']}; {lv['distinct_texts']} distinct text(s); "
              f"max chunk gap {lv['max_chunk_gap_s'] * 1000:.0f} ms; TTFT max {ms(lv['ttft_max'])} ms; "
              f"{lv['tokens_total']} tokens total{extra}")
        cpu = lv["cpu"]
        print(f"{'':>9}       cores used: server {cpu['server_cores']:.2f}, load client {cpu['client_cores']:.2f}, "
              f"other processes {cpu['other_cores']:.2f} (of {cpu['cpus']})")
busy = [(n, c, R[c]["cpu"]["other_cores"]) for n, R in (("ours", O), ("llama.cpp", L)) for c in R]
if any(o > 0.2 for _, _, o in busy):
    print("WARNING: other processes used CPU during the run ("
          + ", ".join(f"{n} C={c}: {o:.2f} cores" for n, c, o in busy if o > 0.2)
          + "): the figures are skewed; rerun on an idle machine")
for name, r in (("ours", ours), ("llama.cpp", llama)):
    if r["anomaly_count"]:
        print(f"{name}: {r['anomaly_count']} stream anomalies, first ones:")
        for a in r["anomalies"][:10]:
            print(f"   {a['kind']}: {a['detail']}")
    else:
        print(f"{name}: no stream anomalies (HTTP, SSE framing, JSON, [DONE], finish_reason)")
same = ours["warmup_text"] == llama["warmup_text"]
print(f"greedy text, ours vs llama.cpp: {'identical' if same else 'different'}")
if not same:
    print(f"   ours : {ours['warmup_text'][:160]!r}")
    print(f"   llama: {llama['warmup_text'][:160]!r}")
print()
if 1 in O and 16 in O and O[1]["tok_s"]:
    scale = O[16]["tok_s"] / O[1]["tok_s"]
    print(f"ours 16-stream / ours 1-stream = {scale:.2f}x (target >= 3x: {'met' if scale >= 3 else 'NOT met'})")
floors = {int(n): float(t) for n, t in re.findall(r"floor batch (\d+): [\d.]+ ms/step, ([\d.]+) tok/s", peak)}
values = dict(re.findall(r"peak (fma G/s|int8 G/s|bf16 G/s|read GB/s|macs/token|int8 macs/token|bf16 macs/token|weight MB/step) ([\d.]+)", peak))
if floors and all(k in values for k in ("fma G/s", "read GB/s", "macs/token", "weight MB/step")):
    int8 = (f", int8 (AVX-512 VNNI) multiply-adds {values['int8 G/s']} G/s" if "int8 G/s" in values else "")
    int8 += (f", bf16 (AVX-512 BF16) multiply-adds {values['bf16 G/s']} G/s" if "bf16 G/s" in values else "")
    print(f"what these {nproc} cores allow (bench-batch --peak): f32 multiply-adds {values['fma G/s']} G/s{int8}, memory read "
          f"{values['read GB/s']} GB/s; a decoded token is {values['macs/token']} M multiply-adds"
          + (f" ({values['int8 macs/token']} M of them int8)" if float(values.get("int8 macs/token", 0)) > 0 else "")
          + (f" ({values['bf16 macs/token']} M of them bf16)" if float(values.get("bf16 macs/token", 0)) > 0 else "")
          + f", a step reads {values['weight MB/step']} MB of weights as loaded")
    for c in sorted(O):
        if c in floors:
            print(f"   C={c:<2}: at most {floors[c]:.1f} tok/s (decode steps alone); ours {O[c]['tok_s']:.1f} = "
                  f"{100 * O[c]['tok_s'] / floors[c]:.0f}% of it")
    if 1 in floors and 16 in floors:
        print(f"   an engine at both floors would scale {floors[16] / floors[1]:.2f}x from 1 to 16 streams here (a step's floor: "
              f"the longer of its multiply-adds at their peaks and one read of the weights)")
ahead = [c for c in sorted(O) if c in L and O[c]["tok_s"] > L[c]["tok_s"]]
behind = [c for c in sorted(O) if c in L and c not in ahead]
print(f"ours ahead of llama.cpp at every concurrency: {'met' if not behind else 'NOT met (behind at C=' + ','.join(map(str, behind)) + ')'}")
PY
