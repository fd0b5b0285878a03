#!/usr/bin/env bash
# Gemma 3 270M: our CPU engine against llama.cpp, same weights, same machine, same run.
#
# What is measured, per weight format, for both engines:
#   - prefill tok/s : 128 prompt tokens processed in one call, up to the first token's logits;
#   - decode tok/s  : 128 greedy tokens, end-of-sequence ignored; 127 forward passes (the first token
#                     comes from the prefill logits), timed from after prefill to after the last
#                     token is chosen, tok/s = 127 / seconds (as our GenerationTimings counts it);
#   - load s        : model file to ready-to-run engine (ours: Engine.load, llama.cpp: Llama());
#   - peak RSS      : /usr/bin/time -f %M of the whole process (llama.cpp runs inside a Python
#                     process through llama-cpp-python, so its RSS includes the interpreter and
#                     numpy: some tens of MB that llama.cpp's own CLI would not have);
#   - same tokens   : how many of the 128 generated ids agree with llama.cpp's, from the start
#                     (a sanity check that both engines ran the same model on the same prompt).
# Both engines get the same 128 prompt ids: a fixed English paragraph tokenized by our tokenizer
# (starting with 2 = <bos>), cut to 128. llama.cpp uses n_threads = n_threads_batch = nproc,
# n_ctx 512 (n_batch 512, so the prompt is one batch). Why: llama.cpp is the reference CPU engine;
# the targets are ours/llama.cpp >= 1.0x for decode and for prefill. The targets are informational:
# the script exits 0 whether or not they are met (non-zero only when something fails to run).
#
# Formats:
#   q4_k_m : models/gemma-3-270m-q4_k_m.gguf for both engines (ours with --tokenizer models/gemma-3-270m).
#   bf16   : ours on models/gemma-3-270m/model.safetensors (bf16). llama.cpp on a bf16 GGUF made
#            from the Q4_K_M GGUF by llama.cpp's own quantizer (llama_model_quantize through
#            llama-cpp-python, allow_requantize, ftype BF16): it dequantizes the same Q4_K_M values
#            the safetensors file was made from (../shared/tools/gguf-to-hf.py), so both engines run
#            the same numbers in bf16. If that conversion fails, the bf16 row compares our bf16
#            against llama.cpp's Q4_K_M as a reference line only, and the table says so.
#
# Usage: benchmarks/engine.sh            (from anywhere; RUNS=3 by default, medians are printed)
#   RUNS=N          runs per engine and format (median of N)
#   MODELS=DIR      weights folder (default: models, relative to the repository root)
#   SKIP_BUILD=1    use the existing .build-bench binary
# Needs: swift on PATH (or /opt/swift/usr/bin), python3 + pip, /usr/bin/time (apt package `time`),
# and llama-cpp-python (installed with pip if missing: builds llama.cpp from source, several minutes;
# needs cmake/ninja/a C++ compiler).
set -euo pipefail

cd "$(dirname "$0")/.."
source benchmarks/lib.sh
RUNS=${RUNS:-3}
MODELS=${MODELS:-models}
NPROC=$(nproc)
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"

if [ ! -x /usr/bin/time ]; then
  echo "installing the Debian package time (for /usr/bin/time)" >&2
  apt-get install -y -q time >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; }
fi

# Weights (idempotent).
bash ../shared/tools/get-gemma3-270m.sh "$MODELS" >/dev/null
GGUF="$MODELS/gemma-3-270m-q4_k_m.gguf"
HF="$MODELS/gemma-3-270m"
BF16_GGUF="$MODELS/gemma-3-270m-bf16-from-q4_k_m.gguf"

# Our engine.
build_inference_server

# llama.cpp through llama-cpp-python.
ensure_llama_cpp_python

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The 128 prompt ids: a fixed paragraph through our tokenizer (with <bos>), cut to 128.
PARAGRAPH="The old lighthouse keeper climbed the spiral stairs every evening, counting each of the \
one hundred and twelve steps as his father had done before him. At the top he trimmed the wick, \
polished the great lens until it shone like a second moon, and wrote the weather in a leather \
ledger whose first pages were older than the town itself. Ships no longer needed his light; they \
carried satellites and radar and charts that updated themselves while the crew slept. Still, on \
stormy nights, fishermen from the harbor said they steered by the steady beam sweeping across the \
water, and children in the houses along the cliff fell asleep watching it pass their windows, \
patient and regular as a heartbeat, long after the keeper himself had gone quietly to bed."
"$SERVER" generate --model "$GGUF" --tokenizer "$HF" --prompt "$PARAGRAPH" --max-tokens 0 --json >"$work/tok.json"
PROMPT_IDS=$(python3 - "$work/tok.json" <<'PY'
import json, sys
ids = json.load(open(sys.argv[1]))["prompt_ids"]
if len(ids) < 128 or ids[0] != 2:
    sys.exit(f"the paragraph gave {len(ids)} ids starting with {ids[:1]}; need >= 128 starting with 2")
print(",".join(map(str, ids[:128])))
PY
)

# llama.cpp bf16 GGUF from the Q4_K_M GGUF (same values as our bf16 safetensors).
BF16_NOTE=""
if [ ! -s "$BF16_GGUF" ]; then
  if ! python3 - "$GGUF" "$BF16_GGUF.partial" "$NPROC" >&2 <<'PY'
import ctypes, sys, llama_cpp
src, dst, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
params.allow_requantize = True
params.nthread = threads
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(1 if rc != 0 else 0)
PY
  then
    rm -f "$BF16_GGUF.partial"
  else
    mv "$BF16_GGUF.partial" "$BF16_GGUF"
  fi
fi
if [ -s "$BF16_GGUF" ]; then
  LLAMA_BF16="$BF16_GGUF"
else
  LLAMA_BF16="$GGUF"
  BF16_NOTE="bf16 row: llama.cpp ran Q4_K_M (no bf16 GGUF could be made): a reference line, not a like-for-like ratio"
fi

# llama.cpp runner: prints one JSON object like ours (timings + output ids).
LLAMA_PY='
import json, sys, time
import numpy as np
import llama_cpp
model, ids, threads = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
max_tokens = 128
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=512,
                      n_batch=512, verbose=False)
load = time.perf_counter() - t0
n_vocab = llm.n_vocab()
def last_logits():  # logits of the last evaluated token, read from the context
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
t0 = time.perf_counter()
llm.eval(ids)
logits = last_logits()
prefill = time.perf_counter() - t0
out, steps = [], 0
t0 = time.perf_counter()
while len(out) < max_tokens:
    tok = int(np.argmax(logits))          # greedy; end-of-sequence ignored
    out.append(tok)
    if len(out) >= max_tokens:
        break
    llm.eval([tok])
    logits = last_logits()
    steps += 1
decode = time.perf_counter() - t0
print(json.dumps({"output_ids": out, "timings": {
    "load_seconds": load, "prompt_tokens": len(ids), "prefill_seconds": prefill,
    "prefill_tokens_per_second": len(ids) / prefill, "generated_tokens": len(out),
    "decode_seconds": decode, "decode_tokens_per_second": steps / decode}}))
'

results="$work/results.jsonl"
: >"$results"
record() { # format engine json-file rss-file
  python3 - "$1" "$2" "$3" "$4" >>"$results" <<'PY'
import json, sys
fmt, engine, out, rss = sys.argv[1:5]
obj = json.loads(open(out).read().strip().splitlines()[-1])
t = obj["timings"]
print(json.dumps({"format": fmt, "engine": engine, "prefill": t["prefill_tokens_per_second"],
                  "decode": t["decode_tokens_per_second"], "load": t["load_seconds"],
                  "rss_kb": int(open(rss).read().strip().splitlines()[-1]),
                  "generated": t["generated_tokens"], "output_ids": obj["output_ids"]}))
PY
}

run_ours() { # format model [tokenizer dir]
  local fmt=$1 model=$2; shift 2
  /usr/bin/time -f %M -o "$work/rss" "$SERVER" generate --model "$model" "$@" --prompt-ids "$PROMPT_IDS" \
    --max-tokens 128 --ignore-eos --json >"$work/out.json"
  record "$fmt" ours "$work/out.json" "$work/rss"
}

run_llama() { # format model
  /usr/bin/time -f %M -o "$work/rss" python3 -c "$LLAMA_PY" "$2" "$PROMPT_IDS" "$NPROC" >"$work/out.json"
  record "$1" llama.cpp "$work/out.json" "$work/rss"
}

for run in $(seq 1 "$RUNS"); do
  echo "run $run/$RUNS" >&2
  run_ours q4_k_m "$GGUF" --tokenizer "$HF"
  run_llama q4_k_m "$GGUF"
  run_ours bf16 "$HF"
  run_llama bf16 "$LLAMA_BF16"
done

python3 - "$results" "$RUNS" "$LLAMA_VERSION" "$NPROC" "$BF16_NOTE" "$LLAMA_BF16" <<'PY'
import json, statistics, sys
path, runs, version, nproc, note, llama_bf16 = sys.argv[1:7]
rows = [json.loads(line) for line in open(path)]
def med(fmt, engine, key):
    return statistics.median(r[key] for r in rows if r["format"] == fmt and r["engine"] == engine)
def same(fmt):
    a = next(r["output_ids"] for r in rows if r["format"] == fmt and r["engine"] == "ours")
    b = next(r["output_ids"] for r in rows if r["format"] == fmt and r["engine"] == "llama.cpp")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
print(f"Gemma 3 270M, 128 prompt ids, 128 greedy tokens (eos ignored), {nproc} threads, median of {runs} run(s); "
      f"llama-cpp-python {version}")
print(f"llama.cpp weights: q4_k_m row: Q4_K_M GGUF; bf16 row: {llama_bf16}")
head = f"{'format':<7} {'engine':<10} {'prefill tok/s':>13} {'decode tok/s':>12} {'load s':>7} {'peak RSS MB':>11} {'same tokens':>11}"
print(head)
print("-" * len(head))
for fmt in ("q4_k_m", "bf16"):
    for engine in ("ours", "llama.cpp"):
        rss = med(fmt, engine, "rss_kb") / 1024
        print(f"{fmt:<7} {engine:<10} {med(fmt, engine, 'prefill'):>13.1f} {med(fmt, engine, 'decode'):>12.1f} "
              f"{med(fmt, engine, 'load'):>7.3f} {rss:>11.1f} {same(fmt) if engine == 'ours' else '':>11}")
    r = {k: med(fmt, "ours", k) / med(fmt, "llama.cpp", k) for k in ("prefill", "decode", "load", "rss_kb")}
    print(f"{fmt:<7} {'ours/llama':<10} {r['prefill']:>12.2f}x {r['decode']:>11.2f}x {r['load']:>6.2f}x {r['rss_kb']:>10.2f}x")
print()
for fmt in ("q4_k_m", "bf16"):
    p, d = med(fmt, "ours", "prefill") / med(fmt, "llama.cpp", "prefill"), med(fmt, "ours", "decode") / med(fmt, "llama.cpp", "decode")
    print(f"{fmt}: decode {d:.2f}x (target >= 1.0x: {'met' if d >= 1 else 'NOT met'}), "
          f"prefill {p:.2f}x (target >= 1.0x: {'met' if p >= 1 else 'NOT met'})")
if note:
    print(note)
PY
