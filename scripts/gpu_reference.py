#!/usr/bin/env python3
"""The PyTorch side of scripts/gpu-check, on the same GPU.

  gpu_reference.py --shape 1b --out DIR   random Gemma 3 weights of that shape (bf16 safetensors that
                                          inference-server loads), a golden file in shared/golden's
                                          format computed by transformers in float32 on those weights,
                                          and transformers' own prefill/decode speed in bf16.
  gpu_reference.py --summary DIR          the table of our figures against transformers' and the
                                          bandwidth limit, from the JSON files the runs left.
"""
import argparse
import json
import os
import re
import sys
import time

SHAPES = {
    # Gemma 3 270M and 1B (their config.json), with random weights.
    "270m": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256),
    "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
               num_key_value_heads=1, head_dim=256),
}


def make_model(shape, out, seed):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    layers = SHAPES[shape]["num_hidden_layers"]
    config = Gemma3TextConfig(
        vocab_size=262144, max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        initializer_range=0.05, attn_implementation="eager", **SHAPES[shape])
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.2)  # stored as w, used as 1 + w
            elif "embed_tokens" in name:
                p.normal_(0.0, 0.1)  # wide enough that greedy steps are not near-ties
    model = model.to(torch.bfloat16)
    folder = os.path.join(out, "model")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def load(folder, dtype, **options):
    from transformers import Gemma3ForCausalLM
    try:
        model = Gemma3ForCausalLM.from_pretrained(folder, dtype=dtype, **options)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model = Gemma3ForCausalLM.from_pretrained(folder, torch_dtype=dtype, **options)
    return model.cuda().eval()


def golden(folder, out, seed):
    """Greedy steps of transformers in float32 (eager attention) on the bf16 weights, recorded as
    shared/golden/README.md describes: greedy ids, the top 10 logits and the logsumexp per step."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = load(folder, torch.float32, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed)
    cases = []
    for name, length, steps in [("short", 12, 24), ("chunked", 300, 16), ("long-sliding-window", 700, 16)]:
        ids = [2] + torch.randint(1000, 200000, (length - 1,), generator=generator).tolist()
        record = {"name": name, "input_ids": list(ids), "greedy_ids": [], "steps": []}
        with torch.no_grad():
            for _ in range(steps):
                logits = model(torch.tensor([ids], device="cuda")).logits[0, -1].double()
                top = torch.topk(logits, 10)
                record["steps"].append({
                    "top": [[int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
                    "logsumexp": float(torch.logsumexp(logits, 0)),
                })
                chosen = int(top.indices[0])
                record["greedy_ids"].append(chosen)
                ids.append(chosen)
        cases.append(record)
    path = os.path.join(out, "golden.json")
    with open(path, "w") as f:
        json.dump({"generation": cases}, f)
    del model
    torch.cuda.empty_cache()
    return path


def timings(folder, out, steps):
    """transformers' own speed on the card, in bf16 with its default attention: a 512-token prefill
    and `generate` at batch 1 and 16 (greedy, a fixed number of new tokens)."""
    import torch

    model = load(folder, torch.bfloat16)
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
    prompt = torch.tensor([[2] + [1000 + (i * 7919) % 20000 for i in range(1, 512)]], device="cuda")
    with torch.no_grad():
        model(prompt)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            model(prompt)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    result["prefill_tokens_per_second"] = 512 / best
    for batch in [1, 16]:
        ids = prompt[:, :64].repeat(batch, 1)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        result[f"decode_b{batch}_tokens_per_second"] = batch * steps / elapsed
    with open(os.path.join(out, "transformers.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def summary(root):
    rows = []
    for shape in SHAPES:
        ours_path, theirs_path = os.path.join(root, shape, "ours.json"), os.path.join(root, shape, "transformers.json")
        if not (os.path.exists(ours_path) and os.path.exists(theirs_path)):
            continue
        ours, theirs = json.load(open(ours_path)), json.load(open(theirs_path))
        limit = ours.get("bandwidth_limit_tokens_per_second", 0)
        for key, label in [("decode_b1_tokens_per_second", "decode, batch 1"),
                           ("decode_b16_tokens_per_second", "decode, batch 16 (all sequences)"),
                           ("prefill_tokens_per_second", "prefill, 512 tokens")]:
            a, b = ours.get(key), theirs.get(key)
            if a is None or b is None:
                continue
            extra = f"  {100 * a / limit:5.1f}% of the bandwidth limit ({limit:.0f} tok/s)" if key == "decode_b1_tokens_per_second" and limit else ""
            rows.append(f"{shape:>5}  {label:<34} ours {a:9.1f} tok/s   transformers {b:9.1f} tok/s   {a / b:6.2f}x{extra}")
        reference = theirs.get("prefill_tokens_per_second")
        for key, label in [("prefill_tensor_cores_tokens_per_second", "prefill, no cuBLAS, tensor cores"),
                           ("prefill_tiled_tokens_per_second", "prefill, no cuBLAS, tiled kernel")]:
            built_in = ours.get(key)
            if built_in and reference:
                rows.append(f"{shape:>5}  {label:<34} ours {built_in:9.1f} tok/s   "
                            f"transformers {reference:9.1f} tok/s   {built_in / reference:6.2f}x")
        for batch in (1, 16):
            graphed = ours.get(f"decode_b{batch}_ms_per_step")
            # The step as it is against the same steps another way (decode_b{batch}_{key}_ms_per_step,
            # where the bench timed it): its label, the other's, and whether the ratio is as it is over
            # the other (the fused MLP, off by default) rather than the other over as it is.
            for key, label, other_label, inverted in [
                    ("no_graphs", "CUDA graphs", "launched one by one", False),
                    ("unfused_norms", "residual norms fused", "in launches of their own", False),
                    ("unfused_head_norms", "q/k norms and RoPE inside attention", "in norm_rope's launch", False),
                    ("fused_mlp", "MLP in two launches", "fused (one launch)", True),
                    ("unstaged", "weights staged in shared memory", "asked of L2 only", False)]:
                other = ours.get(f"decode_b{batch}_{key}_ms_per_step")
                if graphed and other:
                    ratio = graphed / other if inverted else other / graphed
                    rows.append(f"{shape:>5}  decode, batch {batch}: {label} {graphed:.2f} ms/step, "
                                f"{other_label} {other:.2f} ms/step ({ratio:.2f}x)")
            # decode_b1_prefetch_{MiB}mib[_{kind}]_ms_per_step: none (0 MiB), then each kind's amounts.
            ahead = {}
            for k, v in ours.items():
                m = re.fullmatch(r"decode_b1_prefetch_(\d+)mib(?:_(\w+?))?_ms_per_step", k)
                if batch == 1 and m:
                    ahead.setdefault((m.group(2) or "").replace("_", "-"), []).append((int(m.group(1)), v))
            for kind in sorted(ahead):
                rows.append(f"{shape:>5}  decode, batch 1, prefetch ahead{' ' + kind if kind else ''}: "
                            + ", ".join(f"{mib} MiB {ms:.3f} ms/step" for mib, ms in sorted(ahead[kind])))
            greedy = ours.get(f"decode_b{batch}_tokens_per_second")
            drawn = [(name, ours.get(f"decode_b{batch}_{key}_tokens_per_second"))
                     for name, key in [("sampled", "sampled"), ("temperature only", "temperature_only"),
                                       ("top-p only", "top_p_only"), ("top-p only at T 0.3", "top_p_only_cold"),
                                       ("sampled with penalties", "penalized"), ("sampled + 5 logprobs", "logprobs"),
                                       ("logits to the host", "host_logits")]]
            unpipelined = ours.get(f"decode_b{batch}_sampled_unpipelined_ms_per_step")
            sampled = ours.get(f"decode_b{batch}_sampled_tokens_per_second")
            if unpipelined and sampled:
                pipelined_ms = batch * 1000 / sampled
                rows.append(f"{shape:>5}  decode, batch {batch}: sampled steps pipelined {pipelined_ms:.2f} ms/step, "
                            f"one at a time {unpipelined:.2f} ms/step ({unpipelined / pipelined_ms:.2f}x)")
            if greedy and any(rate for _, rate in drawn):
                rows.append(f"{shape:>5}  decode, batch {batch}: greedy {greedy:.0f} tok/s; "
                            + ", ".join(f"{name} {rate:.0f} tok/s" for name, rate in drawn if rate))
        # What the start-up tuning kept (gpu-check --tune), and each value's step.
        tuned, times = ours.get("tuning") or {}, ours.get("tuning_milliseconds") or {}
        for variable in sorted(tuned):
            values = sorted((k.split("=", 1)[1], v) for k, v in times.items() if k.startswith(variable + "="))
            rows.append(f"{shape:>5}  tuned at start: {variable}={tuned[variable]} ("
                        + ", ".join(f"{value} {ms:.3f}" for value, ms in values) + " ms/step)")
    device = next((json.load(open(os.path.join(root, s, "ours.json"))).get("device") for s in SHAPES
                   if os.path.exists(os.path.join(root, s, "ours.json"))), "?")
    print(f"GPU figures on {device} (random weights of each shape, bf16; same card, same run):")
    print("\n".join(rows) if rows else "no figures found")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES))
    parser.add_argument("--out")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--summary")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    if not (args.shape and args.out):
        parser.error("--shape and --out, or --summary")
    os.makedirs(args.out, exist_ok=True)
    folder = make_model(args.shape, args.out, args.seed)
    print(f"{args.shape}: random weights in {folder}", flush=True)
    print(f"{args.shape}: golden file {golden(folder, args.out, args.seed)}", flush=True)
    try:
        result = timings(folder, args.out, args.steps)
        print(f"{args.shape}: transformers " + ", ".join(f"{k} {v:.1f}" for k, v in result.items() if isinstance(v, float)), flush=True)
    except Exception as error:  # the weights and the golden file stand without transformers' timings
        print(f"{args.shape}: transformers timings failed: {error!r}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
