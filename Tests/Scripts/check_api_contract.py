#!/usr/bin/env python3
"""vLLM's API contract beyond the common calls, against a server started with --max-model-len 64.

What clients and evaluation harnesses rely on and a quick SDK test misses: the token itself in each
completions logprobs dict, `include_stop_str_in_output`, `max_tokens: null` and chat without a limit
(the rest of the context; a prompt that fills it is a 400), `max_tokens: 0` only with echo, snake_case names in type errors,
`content: null` messages, `continue_final_message` (chat and /tokenize), chat `echo`,
`truncate_prompt_tokens`, `return_tokens_as_token_ids`, `stream_options.continuous_usage_stats`,
`logit_bias` and `min_tokens`,
405 with Allow for a wrong method, HEAD on GET routes, and a 400 naming each field whose effect the
server does not implement (rather than silence).

Usage: check_api_contract.py --base-url http://127.0.0.1:PORT --model NAME
Exit status 0 when every check passes; otherwise the failures are listed.
"""
import argparse
import json
import sys
import urllib.error
import urllib.request

import openai

from checks import check, finish

CONTEXT = 64  # the server's --max-model-len


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    base, model = args.base_url, args.model
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)

    def call(method, path, payload=None):
        """(status, headers, parsed body or None) without raising on 4xx."""
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        def parsed(raw):
            try:
                return json.loads(raw) if raw else None
            except ValueError:  # /metrics answers text
                return raw.decode(errors="replace")
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, r.headers, parsed(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers, parsed(e.read())

    def error_param(status_body, expected_status=400):
        status, _, body = status_body
        if not check(status == expected_status and isinstance(body, dict) and "error" in body,
                     f"expected {expected_status} with an error body, got {status} {body}"):
            return None
        return body["error"].get("param")

    prompt = "The capital of France is"

    # 1. Each completions logprobs dict holds the token itself beside its alternatives.
    for k in (0, 1, 3):
        lp = client.completions.create(model=model, prompt=prompt, max_tokens=6, temperature=2.0, seed=3, logprobs=k,
                                       extra_body={"ignore_eos": True}).choices[0].logprobs
        for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            check(token in top and abs(top[token] - value) < 1e-6, f"logprobs={k}: {token!r} ({value}) not in {top}")
            check(1 <= len(top) <= k + 1, f"logprobs={k}: {len(top)} entries in {top}")
    scored = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
    for token, top in zip(scored.tokens[1:], scored.top_logprobs[1:]):
        check(token in top, f"echoed prompt token {token!r} missing from {top}")

    # 1b. Streaming echo with logprobs: the prompt's chunk carries its tokens' logprobs, and the
    # stream adds up to the non-streaming answer.
    whole = client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=1,
                                      extra_body={"ignore_eos": True}).choices[0]
    pieces, tokens, values = [], [], []
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                           logprobs=1, stream=True, extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            pieces.append(c.text)
            if c.logprobs:
                tokens += c.logprobs.tokens
                values += c.logprobs.token_logprobs
    check("".join(pieces) == whole.text and tokens == whole.logprobs.tokens,
          f"streamed echo {''.join(pieces)!r} {tokens} != {whole.text!r} {whole.logprobs.tokens}")
    check(len(values) == len(whole.logprobs.token_logprobs) and values[0] is None
          and all(abs(a - b) < 1e-4 for a, b in zip(values[1:], whole.logprobs.token_logprobs[1:])),
          f"streamed echo logprobs {values} != {whole.logprobs.token_logprobs}")

    # 2. include_stop_str_in_output keeps the stop string at the end of the text.
    full = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    words = full.split()
    if check(len(words) >= 2, f"greedy text too short: {full!r}"):
        stop = words[1]
        cut = full.index(stop)
        for include, expected in ((True, full[:cut + len(stop)]), (False, full[:cut])):
            c = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, stop=[stop],
                                          extra_body={"ignore_eos": True, "include_stop_str_in_output": include}).choices[0]
            check(c.text == expected and c.finish_reason == "stop",
                  f"include_stop_str_in_output={include}: {c.text!r}, expected {expected!r}")

    # 3. No limit means the rest of the context; a prompt that leaves no room is a 400 naming it.
    status, _, body = call("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": None,
                                                       "temperature": 0, "ignore_eos": True})
    if check(status == 200, f"max_tokens null: {status} {body}"):
        u = body["usage"]
        check(u["prompt_tokens"] + u["completion_tokens"] == CONTEXT and body["choices"][0]["finish_reason"] == "length",
              f"max_tokens null used {u}, not the rest of the {CONTEXT}-token context")
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to ten."}],
                                          temperature=0, extra_body={"ignore_eos": True})
    check(chat.usage.prompt_tokens + chat.usage.completion_tokens == CONTEXT,
          f"chat without max_tokens used {chat.usage}, not the rest of the context")
    long_text = " ".join(["word"] * 80)
    param = error_param(call("POST", "/v1/chat/completions",
                             {"model": model, "messages": [{"role": "user", "content": long_text}]}))
    check(param == "messages", f"a chat prompt over the context: param {param}")
    status, _, body = call("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": long_text}]})
    check(body and "maximum context length" in body["error"]["message"], f"context message {body}")

    # 3b. max_tokens 0 only scores a prompt (completions with echo); otherwise vLLM's 400.
    for path, payload in (("/v1/completions", {"prompt": prompt, "max_tokens": 0}),
                          ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})):
        param = error_param(call("POST", path, dict(payload, model=model)))
        check(param == "max_tokens", f"{path} max_tokens 0 without echo: param {param!r}")

    # 4. Type errors name the field as the client spelled it.
    for payload, name in (({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
                          ({"prompt": "x", "stop_token_ids": "1"}, "stop_token_ids"),
                          ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 3}}, "stream_options.include_usage")):
        param = error_param(call("POST", "/v1/completions", dict(payload, model=model)))
        check(param == name, f"type error param {param!r}, expected {name!r}")

    # 5. An assistant message with content null (a tool-call turn in SDK histories) is empty text.
    status, _, body = call("POST", "/v1/chat/completions", {
        "model": model, "max_tokens": 2,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "Yo"}]})
    check(status == 200, f"content null: {status} {body}")

    # 6. continue_final_message: the prompt ends inside the last message, in chat and in /tokenize.
    conversation = [{"role": "user", "content": "Name a city."}, {"role": "assistant", "content": "The capital of France is"}]
    status, _, tokens = call("POST", "/tokenize", {"model": model, "messages": conversation, "continue_final_message": True,
                                                   "add_generation_prompt": False})
    if check(status == 200, f"/tokenize continue_final_message: {status} {tokens}"):
        _, _, text = call("POST", "/detokenize", {"model": model, "tokens": tokens["tokens"]})
        check(text["prompt"].endswith("The capital of France is"), f"continued prompt ends {text['prompt'][-40:]!r}")
        status, _, body = call("POST", "/v1/chat/completions", {"model": model, "messages": conversation, "max_tokens": 3,
                                                                "temperature": 0, "continue_final_message": True,
                                                                "add_generation_prompt": False, "ignore_eos": True})
        check(status == 200 and body["usage"]["prompt_tokens"] == tokens["count"],
              f"chat continue_final_message: {status} {body}")
    param = error_param(call("POST", "/v1/chat/completions", {"model": model, "messages": conversation,
                                                             "continue_final_message": True, "add_generation_prompt": True}))
    check(param == "continue_final_message", f"both continue_final_message and add_generation_prompt: param {param}")

    # 7. Chat echo: the answer starts with the assistant's last message.
    status, _, body = call("POST", "/v1/chat/completions", {"model": model, "messages": conversation, "max_tokens": 3,
                                                            "temperature": 0, "continue_final_message": True, "echo": True})
    check(status == 200 and body["choices"][0]["message"]["content"].startswith("The capital of France is"),
          f"chat echo: {status} {body}")

    # 8. truncate_prompt_tokens keeps the last tokens; return_tokens_as_token_ids names tokens by id.
    r = client.completions.create(model=model, prompt=long_text[:200], max_tokens=1, temperature=0,
                                  extra_body={"truncate_prompt_tokens": 5})
    check(r.usage.prompt_tokens == 5, f"truncate_prompt_tokens 5 gave {r.usage.prompt_tokens} prompt tokens")
    lp = client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0, logprobs=1,
                                   extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
    check(all(t.startswith("token_id:") and t[9:].isdigit() for t in lp.tokens), f"token ids as tokens: {lp.tokens}")

    # 8b. logit_bias moves the greedy choice; min_tokens holds back the end tokens (and stop strings).
    def first_ids(count, **extra):
        body = dict({"model": model, "prompt": prompt, "max_tokens": count, "temperature": 0, "logprobs": 0,
                     "return_tokens_as_token_ids": True}, **extra)
        status, _, r = call("POST", "/v1/completions", body)
        if not check(status == 200, f"{extra}: {status} {r}"):
            return [], None
        c = r["choices"][0]
        return [int(t[9:]) for t in c["logprobs"]["tokens"]], c
    greedy, _ = first_ids(3, ignore_eos=True)
    if check(len(greedy) == 3, f"greedy ids {greedy}"):
        barred, _ = first_ids(1, logit_bias={str(greedy[0]): -100})
        check(barred and barred[0] != greedy[0], f"logit_bias -100 on {greedy[0]} still gave {barred}")
        forced, _ = first_ids(1, logit_bias={"9259": 100})
        check(forced == [9259], f"logit_bias +100 on 9259 gave {forced}")
        stopped, c = first_ids(8, stop_token_ids=[greedy[0]])
        check(len(stopped) == 1 and c["finish_reason"] == "stop", f"stop_token_ids {greedy[0]}: {stopped}")
        held, c = first_ids(8, stop_token_ids=[greedy[0]], min_tokens=3)
        check(len(held) >= 3 and greedy[0] not in held[:3], f"min_tokens 3 with stop token {greedy[0]}: {held}")
    # A stop string is found once the output is longer than min_tokens, even when it began earlier
    # (vLLM looks back); greedy here is "Say| hi|.| mendatang|...".
    say = [{"role": "user", "content": "Say hi."}]
    status, _, body = call("POST", "/v1/chat/completions", {"model": model, "messages": say, "max_tokens": 16,
                                                            "temperature": 0, "stop": ["hi. m"], "min_tokens": 2})
    check(status == 200 and body["choices"][0]["message"]["content"] == "Say ",
          f"min_tokens 2 with a stop string begun before it: {status} {body}")
    # include_stop_str_in_output keeps a stop token's text too ("\n" is token 107).
    status, _, body = call("POST", "/v1/chat/completions", {"model": model, "messages": say, "max_tokens": 16,
                                                            "temperature": 0, "stop_token_ids": [107],
                                                            "include_stop_str_in_output": True})
    c = body["choices"][0] if status == 200 else {}
    check(c.get("stop_reason") == 107 and c["message"]["content"].endswith("\n"),
          f"include_stop_str_in_output with a stop token: {status} {body}")
    param = error_param(call("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 2, "min_tokens": 3}))
    check(param == "min_tokens", f"min_tokens over max_tokens: param {param}")
    param = error_param(call("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 2,
                                                         "logit_bias": {"262144": 1}}))
    check(param == "logit_bias", f"logit_bias outside the vocabulary: param {param}")
    # Sampling values out of vLLM's ranges: a 400 naming the field.
    for name, value in (("temperature", -1), ("top_p", 0), ("top_k", -2), ("min_p", 1.5),
                        ("repetition_penalty", 0), ("presence_penalty", 3), ("frequency_penalty", -2.5)):
        param = error_param(call("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 2,
                                                             name: value}))
        check(param == name, f"{name} {value}: param {param}")

    # 9. continuous_usage_stats: every chunk with a choice carries that choice's usage so far (vLLM:
    # its prompt's tokens and its own completion tokens, not the request's sums).
    counts, prompts = {0: [], 1: []}, set()
    for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=1.0, seed=5, n=2,
                                           stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True},
                                           extra_body={"ignore_eos": True}):
        if chunk.choices:
            check(chunk.usage is not None, "a chunk without usage under continuous_usage_stats")
            if chunk.usage is not None:
                counts[chunk.choices[0].index].append(chunk.usage.completion_tokens)
                prompts.add(chunk.usage.prompt_tokens)
    for index, seen in counts.items():
        check(seen == sorted(seen) and seen and seen[-1] == 4, f"choice {index}: continuous usage counts {seen}")
    check(len(prompts) == 1 and list(prompts)[0] < 10, f"continuous usage prompt_tokens {prompts}")

    # 10. Wrong methods get 405 with Allow; HEAD answers on GET routes; /ping takes POST (SageMaker).
    status, _, _ = call("POST", "/ping", {})
    check(status == 200, f"POST /ping: {status}")
    for method, path, allowed in (("GET", "/v1/completions", "POST"), ("POST", "/v1/models", "GET")):
        status, headers, body = call(method, path, {} if method == "POST" else None)
        check(status == 405 and allowed in (headers.get("Allow") or "") and body and body["error"]["code"] == 405,
              f"{method} {path}: {status} Allow={headers.get('Allow')} {body}")
    # Every route of the surface: its own methods answer (not 404/405), any other gets 405 whose Allow
    # lists exactly its methods (the server's table of them is kept by hand beside its routes).
    surface = {"/health": {"GET", "HEAD"}, "/version": {"GET", "HEAD"}, "/metrics": {"GET", "HEAD"},
               "/v1/models": {"GET", "HEAD"}, "/ping": {"GET", "HEAD", "POST"}, "/v1/completions": {"POST"},
               "/v1/chat/completions": {"POST"}, "/tokenize": {"POST"}, "/detokenize": {"POST"}}
    for path, methods in surface.items():
        for method in ("GET", "POST", "PUT", "DELETE"):
            status, headers, _ = call(method, path, {} if method in ("POST", "PUT") else None)
            if method in methods:
                check(status not in (404, 405), f"{method} {path}: {status}")
            else:
                allow = {m.strip() for m in (headers.get("Allow") or "").split(",") if m.strip()}
                check(status == 405 and allow == methods, f"{method} {path}: {status} Allow={headers.get('Allow')}")
    for path in ("/health", "/v1/models"):
        status, _, _ = call("HEAD", path)
        check(status == 200, f"HEAD {path}: {status}")

    # 11. Fields whose effect is not implemented are refused, naming them; harmless values pass.
    for extra, name in (({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
                        ({"guided_json": {"type": "object"}}, "guided_json"), ({"best_of": 3}, "best_of"),
                        ({"best_of": 1, "n": 2}, "best_of"), ({"use_beam_search": True}, "use_beam_search"),
                        ({"tool_choice": "required"}, "tool_choice"), ({"structural_tag": {}}, "structural_tag"),
                        ({"truncate_prompt_tokens": 1000}, "truncate_prompt_tokens"), ({"min_tokens": -1}, "min_tokens")):
        param = error_param(call("POST", "/v1/chat/completions", dict(
            {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}, **extra)))
        check(param == name, f"{name}: param {param}")
    for extra in ({"response_format": {"type": "text"}}, {"logit_bias": {}}, {"min_tokens": 0},
                  {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}):
        status, _, body = call("POST", "/v1/chat/completions", dict(
            {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}, **extra))
        check(status == 200, f"{extra}: {status} {body}")

    return finish("all API contract checks passed")


if __name__ == "__main__":
    sys.exit(main())
