#!/usr/bin/env python3
"""The official `openai` Python SDK against a running inference-server with a real model.

Checks what a user's existing OpenAI client code relies on: completions and chat, streaming (with
usage), n > 1, stop strings, seed reproducibility, logprobs (sampled, top, and echoed prompt
logprobs, which evaluation harnesses use to score text), errors raised as the SDK's own exception
classes, the codelab's exact curl, and the vLLM extras (/tokenize, /detokenize, /metrics, /version).

--expected is the JSON that `inference-server generate --json` printed for --prompt with the same
greedy settings: the server's greedy completion must be exactly that text.

Usage: check_openai_server.py --base-url http://127.0.0.1:PORT --model NAME --prompt TEXT --expected FILE
Exit status 0 when every check passes; otherwise the failures are listed.
"""
import argparse
import json
import subprocess
import sys
import urllib.request

import openai

from checks import check, finish


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--expected", required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    expected = json.load(open(args.expected))
    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    model = args.model

    def post(path, payload):
        request = urllib.request.Request(args.base_url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request, timeout=30))


    # Models.
    ids = [m.id for m in client.models.list().data]
    check(model in ids, f"/v1/models lists {ids}, not {model}")

    # Greedy completion equals `inference-server generate` for the same prompt.
    greedy = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0, extra_body={"ignore_eos": True}
    )
    text = greedy.choices[0].text
    check(text == expected["text"], f"greedy completion {text!r} != generate's {expected['text']!r}")
    check(greedy.object == "text_completion", f"object {greedy.object}")
    check(greedy.usage.prompt_tokens == len(expected["prompt_ids"]),
          f"usage.prompt_tokens {greedy.usage.prompt_tokens} != {len(expected['prompt_ids'])}")
    check(greedy.usage.completion_tokens == args.max_tokens, f"usage.completion_tokens {greedy.usage.completion_tokens}")
    check(greedy.choices[0].finish_reason == "length", f"finish_reason {greedy.choices[0].finish_reason}")

    # The same, streamed: the chunks add up to the same text, with one finish_reason and usage at the end.
    stream = client.completions.create(
        model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    pieces, finishes, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    check("".join(pieces) == text, f"streamed text {''.join(pieces)!r} != {text!r}")
    check(finishes == ["length"], f"stream finish reasons {finishes}")
    check(usage is not None and usage.completion_tokens == args.max_tokens, f"stream usage {usage}")

    # Chat, plain and streamed: the same greedy answer either way.
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    answer = chat.choices[0].message.content
    check(chat.object == "chat.completion", f"chat object {chat.object}")
    check(chat.choices[0].message.role == "assistant", "chat role")
    check(isinstance(answer, str) and len(answer) > 0, f"chat content {answer!r}")
    check(chat.choices[0].finish_reason in ("stop", "length"), f"chat finish {chat.choices[0].finish_reason}")
    streamed, roles = [], []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0, stream=True):
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object}")
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                streamed.append(choice.delta.content)
    check(roles == ["assistant"], f"stream roles {roles}")
    check("".join(streamed) == answer, f"streamed chat {''.join(streamed)!r} != {answer!r}")

    # n > 1: n choices, indices 0..n-1; with a seed they are reproducible and differ from each other.
    def sampled(seed, n=3):
        r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0,
                                      n=n, seed=seed)
        check(sorted(c.index for c in r.choices) == list(range(n)), f"indices {[c.index for c in r.choices]}")
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    first = sampled(1234)
    second = sampled(1234)
    check(first == second, f"same seed gave {first} then {second}")
    check(len(set(first)) > 1, f"n=3 choices are all the same: {first}")
    other = sampled(99)
    check(other != first, "a different seed gave the same choices")

    # Stop strings: the text ends before the stop string and finish_reason is "stop".
    words = text.split()
    if check(len(words) >= 2, f"the greedy text is too short to test stop: {text!r}"):
        stop = words[1]
        stopped = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens,
                                            temperature=0, stop=[stop], extra_body={"ignore_eos": True})
        c = stopped.choices[0]
        check(c.finish_reason == "stop", f"stop finish_reason {c.finish_reason}")
        check(c.text == text[: text.index(stop)], f"stopped text {c.text!r}, expected {text[: text.index(stop)]!r}")
        check(stop not in c.text, "the stop string is in the text")

    # stop_token_ids: generation ends on that token, which is counted but whose text is left out (vLLM).
    stop_id = expected["output_ids"][2]
    if expected["output_ids"].index(stop_id) == 2:
        r = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0,
                                      extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
        c = r.choices[0]
        head = post("/detokenize", {"tokens": expected["output_ids"][:2]})["prompt"]
        check(c.finish_reason == "stop" and getattr(c, "stop_reason", None) == stop_id, f"stop_token_ids: {c}")
        check(c.text == head, f"stop_token_ids text {c.text!r}, expected {head!r}")
        check(r.usage.completion_tokens == 3, f"stop_token_ids usage {r.usage}")

    # Logprobs: one per token, <= 0, the sampled token's logprob equals generate's, k alternatives each.
    lp = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens, temperature=0,
                                   logprobs=3, extra_body={"ignore_eos": True}).choices[0].logprobs
    check(len(lp.token_logprobs) == args.max_tokens, f"{len(lp.token_logprobs)} token logprobs")
    check(all(v <= 0 for v in lp.token_logprobs), "a logprob is positive")
    check(all(1 <= len(t) <= 4 and tok in t for t, tok in zip(lp.top_logprobs, lp.tokens)), "top_logprobs sizes")
    for got, want in zip(lp.token_logprobs, expected["logprobs"]):
        check(abs(got - want) < 1e-3, f"logprob {got} != generate's {want}")
    check("".join(lp.tokens) == text, f"logprob tokens {lp.tokens} do not spell the text")
    chat_lp = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0,
                                             logprobs=True, top_logprobs=2).choices[0].logprobs
    check(chat_lp is not None and len(chat_lp.content) >= 1, "chat logprobs missing")
    for entry in chat_lp.content:
        check(entry.logprob <= 0 and len(entry.top_logprobs) == 2 and isinstance(entry.bytes, list), f"chat logprob {entry}")

    # Scoring: echo + logprobs + max_tokens 0 gives every prompt token's logprob (the first has none).
    scored = client.completions.create(model=model, prompt=args.prompt, max_tokens=0, echo=True, logprobs=1)
    s = scored.choices[0]
    check(s.text == args.prompt, f"echo text {s.text!r}")
    check(len(s.logprobs.token_logprobs) == len(expected["prompt_ids"]), "echo logprob count")
    check(s.logprobs.token_logprobs[0] is None, "the first prompt token has a logprob")
    check(all(v is not None and v <= 0 for v in s.logprobs.token_logprobs[1:]), "prompt logprobs")

    # vLLM's prompt_logprobs: per prompt token, null first, then {id: {logprob, ...}} with the token itself.
    pl = client.completions.create(model=model, prompt=args.prompt, max_tokens=1, temperature=0,
                                   extra_body={"prompt_logprobs": 2}).choices[0]
    entries = getattr(pl, "prompt_logprobs", None)
    if check(isinstance(entries, list) and len(entries) == len(expected["prompt_ids"]), f"prompt_logprobs {entries}"):
        check(entries[0] is None, "the first prompt token has prompt logprobs")
        for token_id, entry in zip(expected["prompt_ids"][1:], entries[1:]):
            check(str(token_id) in entry and entry[str(token_id)]["logprob"] <= 0, f"prompt_logprobs entry {entry}")
            own = entry.get(str(token_id), {})
            ranked_above = [v for k, v in entry.items() if k != str(token_id) and v["logprob"] > own.get("logprob", 0)]
            check(isinstance(own.get("rank"), int) and own["rank"] >= 1 + len(ranked_above),
                  f"prompt_logprobs rank of the token itself: {entry}")
            check(len(entry) <= 3, f"more than 2 alternatives: {entry}")
        for got, want in zip(entries[1:], s.logprobs.token_logprobs[1:]):
            check(abs(list(got.values())[0]["logprob"] - want) < 1e-4, "prompt_logprobs disagree with echo logprobs")

    # Prefix caching: a prompt that begins like an earlier one reuses that beginning's KV cache
    # (vllm:prefix_cache_hits_total grows) and answers as a fresh prefill does. prompt_logprobs needs
    # every prompt position computed, so that request reuses nothing and is the reference.
    def counter(name):
        text = urllib.request.urlopen(args.base_url + "/metrics", timeout=30).read().decode()
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
        return values[0] if values else None
    longer = args.prompt + " the city of lights, and of its museums"
    hits = counter("vllm:prefix_cache_hits_total")
    reused = client.completions.create(model=model, prompt=longer, max_tokens=8, temperature=0, logprobs=1,
                                       extra_body={"ignore_eos": True}).choices[0]
    gained = (counter("vllm:prefix_cache_hits_total") or 0) - (hits or 0)
    check(hits is not None and gained >= len(expected["prompt_ids"]) - 1, f"prefix cache hits grew by {gained}")
    fresh = client.completions.create(model=model, prompt=longer, max_tokens=8, temperature=0, logprobs=1,
                                      extra_body={"ignore_eos": True, "prompt_logprobs": 1}).choices[0]
    check(reused.text == fresh.text, f"with a reused prefix {reused.text!r}, fresh {fresh.text!r}")
    check(abs(reused.logprobs.token_logprobs[0] - fresh.logprobs.token_logprobs[0]) < 0.05,
          f"first logprob {reused.logprobs.token_logprobs[0]} reused vs {fresh.logprobs.token_logprobs[0]} fresh")

    # Errors are the SDK's exception classes, with the OpenAI body.
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        check(False, "an unknown model was accepted")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and "no-such-model" in str(e), f"unknown model error {e}")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=10_000_000)
        check(False, "max_tokens past the context was accepted")
    except openai.BadRequestError as e:
        check("maximum context length" in str(e), f"context error {e}")
    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=1)
        check(False, "empty messages were accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"empty messages error {e}")
    try:
        client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "hi"}], max_tokens=1)
        check(False, "a bad role was accepted")
    except openai.BadRequestError as e:
        check("role" in str(e), f"bad role error {e}")

    # The codelab's curl, verbatim but for the URL.
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", args.base_url + "/v1/completions", "-H", "Content-Type: application/json",
         "-d", '{"model": "google/gemma-3-1b-it", "prompt": "San Francisco is a", "max_tokens": 7, "temperature": 0}'],
        capture_output=True, text=True, timeout=120)
    try:
        body = json.loads(out.stdout)
        check(body["model"] == "google/gemma-3-1b-it" and len(body["choices"]) == 1 and body["usage"]["completion_tokens"] <= 7,
              f"codelab curl answer {body}")
    except (ValueError, KeyError) as e:
        check(False, f"codelab curl: {e}: {out.stdout} {out.stderr}")

    # vLLM's extra routes.
    tokens = post("/tokenize", {"model": model, "prompt": args.prompt})
    check(tokens["tokens"] == expected["prompt_ids"] and tokens["count"] == len(expected["prompt_ids"]), f"tokenize {tokens}")
    check(post("/detokenize", {"model": model, "tokens": expected["prompt_ids"][1:]})["prompt"] == args.prompt, "detokenize")
    metrics = urllib.request.urlopen(args.base_url + "/metrics", timeout=30).read().decode()
    for name in ("vllm:num_requests_running", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:kv_cache_usage_perc", "vllm:request_success_total", "vllm:prefix_cache_queries_total"):
        check(name in metrics, f"/metrics lacks {name}")
    generated = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("vllm:generation_tokens_total")]
    check(generated and generated[0] >= 5 * args.max_tokens, f"generation_tokens_total {generated}")
    check("version" in json.load(urllib.request.urlopen(args.base_url + "/version", timeout=30)), "/version")

    return finish("all OpenAI SDK checks passed")


if __name__ == "__main__":
    sys.exit(main())
