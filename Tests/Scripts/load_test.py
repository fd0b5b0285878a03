#!/usr/bin/env python3
"""Load test for `inference-server serve`: many concurrent streaming clients, zero errors, flat memory.

    python3 Tests/Scripts/load_test.py --base-url http://127.0.0.1:8080 [--clients 32] [--seconds 120]
        [--pid PID] [--model NAME]

Why: continuous batching juggles many sequences at once; under sustained load the server must answer
every request correctly (no 5xx, no 429 at this concurrency, no broken or interleaved streams) and must
not leak memory (KV cache slots, per-request buffers, connections) as requests come and go.

What it does (Python standard library only: HTTP/1.1 over asyncio streams, loopback only): --clients
tasks each loop, until --seconds have passed (and at most --max-requests in all), sending streaming
requests that alternate between POST /v1/completions and /v1/chat/completions, with max_tokens random
in 8..48, temperature 0.7 with a per-request seed, n=2 for about one request in four, and
stream_options.include_usage. Every response must be:
  - HTTP 200 with Content-Type text/event-stream;
  - a stream of `data: <json>` events, each a chunk of the right object type ("text_completion" or
    "chat.completion.chunk") with the request's id and model, whose choices have indexes in 0..n-1;
    no error events;
  - exactly one finish_reason ("stop" or "length") per choice, nothing for a choice after it;
  - one usage chunk (choices []) before the end, with completion_tokens <= n * max_tokens (equal when
    every choice finished with "length");
  - `data: [DONE]` last, and nothing after it.
With --pid it samples the server's RSS (VmRSS in /proc/PID/status) every second and reports first /
last / peak. After the warm-up (the first --warmup seconds) the rest of the run is cut in quarters: the
test fails if the peak RSS of the last quarter exceeds the peak of the first quarter by more than
20% + 64 MiB. At the end: GET /health is 200, /metrics shows no running or waiting request, and the
process (with --pid) is alive.

Prints requests done, tokens received, errors (the first 20, with the request that caused each) and
the RSS figures; exits non-zero on any failure."""
import argparse
import asyncio
import json
import os
import random
import sys
import time
import urllib.parse

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080 (loopback only)")
ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
ap.add_argument("--seconds", type=float, default=120, help="how long clients start new requests (default 120)")
ap.add_argument("--pid", type=int, help="server process id: sample its RSS, check it stays alive")
ap.add_argument("--model", help="model name (default: the first of GET /v1/models)")
ap.add_argument("--seed", type=int, default=0, help="seed of the request RNG")
ap.add_argument("--max-requests", type=int, default=100000, help="stop after this many requests in all")
ap.add_argument("--request-timeout", type=float, default=300, help="seconds one request may take")
ap.add_argument("--warmup", type=float, default=10, help="seconds of RSS samples left out of the memory check")
opts = ap.parse_args()

url = urllib.parse.urlsplit(opts.base_url)
HOST, PORT = url.hostname, url.port or 80
if HOST not in ("127.0.0.1", "localhost", "::1"):
    sys.exit("refusing to run against a non-loopback host: " + HOST)

PROMPTS = [
    "Once upon a time", "The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,",
    "Explain what a hash table is.", "def fibonacci(n):", "List three colors:", "Translate 'good morning' to German.",
    "The quick brown fox", "Why is the sky blue?", "Tell me a joke about computers.", "Summarize: the cat sat on the mat.",
]


class StreamError(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------
# HTTP over asyncio streams


def request_bytes(method, path, body=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{PORT}", "Connection: close"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def open_response(method, path, body=None):
    """Sends a request; returns (reader, writer, status, headers)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), 10)
    writer.write(request_bytes(method, path, body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return reader, writer, status, headers


async def body_pieces(reader, headers):
    """The response body as it arrives, de-chunked."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise StreamError("connection closed inside the chunked body (no last chunk)")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                return
            data = await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise StreamError("chunk not followed by CRLF")
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def simple(method, path, body=None):
    reader, writer, status, headers = await open_response(method, path, body)
    try:
        data = b"".join([piece async for piece in body_pieces(reader, headers)])
    finally:
        writer.close()
    return status, data


# ----------------------------------------------------------------------------------------------------------
# one streamed request and its checks


class StreamCheck:
    """Validates the events of one stream as they arrive."""

    def __init__(self, chat, n, max_tokens, model):
        self.chat, self.n, self.max_tokens, self.model = chat, n, max_tokens, model
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.id = None
        self.done = False
        self.finish = {}  # choice index -> finish_reason
        self.usage = None
        self.chunks = 0
        self.first_content = None

    def event(self, text):
        if self.done:
            raise StreamError(f"event after data: [DONE]: {text[:200]!r}")
        lines = [line for line in text.split("\n") if line and not line.startswith(":")]
        if len(lines) != 1 or not lines[0].startswith("data: "):
            raise StreamError(f"event is not one 'data: ' line: {text[:200]!r}")
        data = lines[0][6:]
        if data == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise StreamError(f"event data is not JSON: {data[:200]!r}")
        if not isinstance(chunk, dict):
            raise StreamError(f"chunk is not an object: {data[:200]!r}")
        if "error" in chunk:
            raise StreamError(f"error event: {data[:300]}")
        if chunk.get("object") != self.object:
            raise StreamError(f"object {chunk.get('object')!r}, expected {self.object!r}")
        if self.id is None:
            self.id = chunk.get("id")
            if not isinstance(self.id, str) or not self.id:
                raise StreamError(f"chunk without an id: {data[:200]!r}")
        elif chunk.get("id") != self.id:
            raise StreamError(f"id changed within the stream: {self.id!r} -> {chunk.get('id')!r}")
        if chunk.get("model") != self.model:
            raise StreamError(f"model {chunk.get('model')!r}, expected {self.model!r}")
        if type(chunk.get("created")) is not int:
            raise StreamError("created is not an integer")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise StreamError(f"choices is not a list: {data[:200]!r}")
        if self.usage is not None:
            raise StreamError(f"chunk after the usage chunk: {data[:200]!r}")
        if not choices:  # the usage chunk
            usage = chunk.get("usage")
            if not isinstance(usage, dict) or not all(type(usage.get(k)) is int for k in
                                                      ("prompt_tokens", "completion_tokens", "total_tokens")):
                raise StreamError(f"chunk without choices and without a valid usage: {data[:200]!r}")
            if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
                raise StreamError(f"usage does not add up: {usage}")
            self.usage = usage
            return
        if chunk.get("usage") is not None:
            raise StreamError(f"usage on a chunk with choices: {data[:200]!r}")
        self.chunks += 1
        for choice in choices:
            index = choice.get("index")
            if type(index) is not int or not 0 <= index < self.n:
                raise StreamError(f"choice index {index!r} outside 0..{self.n - 1}")
            if index in self.finish:
                raise StreamError(f"choice {index}: chunk after its finish_reason: {json.dumps(choice)[:200]}")
            if self.chat:
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    raise StreamError(f"chat choice without a delta object: {json.dumps(choice)[:200]}")
                if "role" in delta and delta["role"] != "assistant":
                    raise StreamError(f"delta role {delta['role']!r}")
                if "content" in delta and not isinstance(delta["content"], (str, type(None))):
                    raise StreamError("delta content is not a string")
                content = delta.get("content")
            else:
                content = choice.get("text")
                if not isinstance(content, str):
                    raise StreamError(f"completion choice without a text string: {json.dumps(choice)[:200]}")
            if content and self.first_content is None:
                self.first_content = time.monotonic()
            reason = choice.get("finish_reason")
            if reason is not None:
                if reason not in ("stop", "length"):
                    raise StreamError(f"finish_reason {reason!r}")
                self.finish[index] = reason

    def end(self):
        if not self.done:
            raise StreamError("the stream ended without data: [DONE]")
        missing = [i for i in range(self.n) if i not in self.finish]
        if missing:
            raise StreamError(f"no finish_reason for choice(s) {missing}")
        if self.usage is None:
            raise StreamError("no usage chunk although stream_options.include_usage was set")
        tokens = self.usage["completion_tokens"]
        if tokens > self.n * self.max_tokens:
            raise StreamError(f"completion_tokens {tokens} > n * max_tokens = {self.n * self.max_tokens}")
        if all(r == "length" for r in self.finish.values()) and tokens != self.n * self.max_tokens:
            raise StreamError(f"every choice ended with 'length' but completion_tokens is {tokens}, "
                              f"not n * max_tokens = {self.n * self.max_tokens}")


class Stats:
    def __init__(self):
        self.started = self.done = self.tokens = self.chunks = 0
        self.per_path = {"/v1/completions": 0, "/v1/chat/completions": 0}
        self.errors = []
        self.ttft = []
        self.latency = []


stats = Stats()


async def one_request(rng, model, chat):
    n = 2 if rng.random() < 0.25 else 1
    max_tokens = rng.randint(8, 48)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": rng.randrange(2**31), "n": n,
            "stream": True, "stream_options": {"include_usage": True}}
    if chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": rng.choice(PROMPTS)}]
    else:
        path = "/v1/completions"
        body["prompt"] = rng.choice(PROMPTS)
    raw = json.dumps(body).encode()
    t0 = time.monotonic()
    check = StreamCheck(chat, n, max_tokens, model)
    writer = None
    try:
        async def run():
            nonlocal writer
            reader, writer, status, headers = await open_response("POST", path, raw)
            if status != 200:
                data = b"".join([p async for p in body_pieces(reader, headers)])
                raise StreamError(f"HTTP {status}: {data[:300]!r}")
            if not headers.get("content-type", "").startswith("text/event-stream"):
                raise StreamError(f"Content-Type {headers.get('content-type')!r}, not text/event-stream")
            buffer = b""
            async for piece in body_pieces(reader, headers):
                buffer += piece  # an HTTP chunk may hold several events, or part of one
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    check.event(event.decode("utf-8"))  # a whole event must be valid UTF-8
            if buffer.strip():
                raise StreamError(f"bytes after the last event: {buffer[:200]!r}")
            check.end()

        await asyncio.wait_for(run(), opts.request_timeout)
        stats.done += 1
        stats.per_path[path] += 1
        stats.tokens += check.usage["completion_tokens"]
        stats.chunks += check.chunks
        stats.latency.append(time.monotonic() - t0)
        if check.first_content:
            stats.ttft.append(check.first_content - t0)
    except (StreamError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError,
            UnicodeDecodeError, ValueError) as e:
        what = "timed out" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}"
        stats.errors.append((what, f"POST {path} {raw.decode()}"))
        if len(stats.errors) <= 5:
            print(f"  ERROR {what}\n        request: POST {path} {raw.decode()}", flush=True)
    finally:
        if writer is not None:
            writer.close()


async def client(index, model, deadline):
    rng = random.Random(opts.seed * 1000 + index)
    k = 0
    while time.monotonic() < deadline and stats.started < opts.max_requests:
        stats.started += 1
        await one_request(rng, model, chat=(index + k) % 2 == 1)
        k += 1


# ----------------------------------------------------------------------------------------------------------
# memory


def read_rss():
    """VmRSS in MiB, or None when the process is gone."""
    try:
        with open(f"/proc/{opts.pid}/status") as f:
            for line in f:
                if line.startswith("State:") and line.split()[1] == "Z":
                    return None
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


async def sample_rss(samples, start, stop):
    while not stop.is_set():
        rss = read_rss()
        if rss is None:
            stats.errors.append((f"process {opts.pid} is gone (RSS not readable)", ""))
            print(f"  ERROR process {opts.pid} is gone", flush=True)
            return
        samples.append((time.monotonic() - start, rss))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def memory_verdict(samples, duration):
    """(lines to print, failure or None)."""
    if not samples:
        return ["RSS: no samples"], None
    lines = [f"RSS: first {samples[0][1]:.0f} MiB, last {samples[-1][1]:.0f} MiB, "
             f"peak {max(r for _, r in samples):.0f} MiB ({len(samples)} samples)"]
    window = [(t, r) for t, r in samples if opts.warmup <= t <= duration]
    if duration - opts.warmup < 4 or len(window) < 4:
        lines.append(f"RSS check skipped: less than 4 s of samples after the {opts.warmup:.0f} s warm-up")
        return lines, None
    quarter = (duration - opts.warmup) / 4
    first = [r for t, r in window if t < opts.warmup + quarter] or [window[0][1]]
    last = [r for t, r in window if t >= duration - quarter] or [window[-1][1]]
    limit = max(first) * 1.2 + 64
    lines.append(f"RSS after warm-up: first quarter peak {max(first):.0f} MiB, last quarter peak {max(last):.0f} MiB "
                 f"(limit {limit:.0f} MiB = first * 1.2 + 64)")
    if max(last) > limit:
        return lines, f"memory grew: last-quarter RSS peak {max(last):.0f} MiB > {limit:.0f} MiB"
    return lines, None


# ----------------------------------------------------------------------------------------------------------
# main


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def main():
    model = opts.model
    if not model:
        status, data = await simple("GET", "/v1/models")
        if status != 200:
            sys.exit(f"GET /v1/models: HTTP {status} {data[:200]!r}")
        model = json.loads(data)["data"][0]["id"]
    status, _ = await simple("GET", "/health")
    if status != 200:
        sys.exit(f"GET /health: HTTP {status}")
    print(f"server {opts.base_url}, model {model!r}: {opts.clients} clients for {opts.seconds:.0f} s", flush=True)

    start = time.monotonic()
    deadline = start + opts.seconds
    samples, stop = [], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(samples, start, stop)) if opts.pid else None

    async def progress():
        while True:
            await asyncio.sleep(10)
            rss = f", RSS {samples[-1][1]:.0f} MiB" if samples else ""
            print(f"  {time.monotonic() - start:5.0f} s: {stats.done} requests done, {stats.tokens} tokens, "
                  f"{len(stats.errors)} errors{rss}", flush=True)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(*(client(i, model, deadline) for i in range(opts.clients)))
    elapsed = time.monotonic() - start
    reporter.cancel()
    if sampler:
        stop.set()
        await sampler

    # The server afterwards: healthy, idle, alive.
    failures = []
    try:
        status, _ = await simple("GET", "/health")
        if status != 200:
            failures.append(f"GET /health after the run: HTTP {status}")
        for _ in range(30):
            status, data = await simple("GET", "/metrics")
            values = {}
            for line in data.decode().splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
            if values.get("vllm:num_requests_running") == 0 and values.get("vllm:num_requests_waiting") == 0:
                break
            await asyncio.sleep(1)
        else:
            failures.append(f"/metrics still shows running/waiting requests 30 s after the run: {values}")
    except (OSError, ValueError, asyncio.IncompleteReadError) as e:
        failures.append(f"the server does not answer after the run: {e}")
    if opts.pid and read_rss() is None:
        failures.append(f"process {opts.pid} is not alive after the run")

    print(f"\n{stats.done} requests done in {elapsed:.1f} s ({stats.per_path['/v1/completions']} completions, "
          f"{stats.per_path['/v1/chat/completions']} chat), {stats.started} started")
    print(f"tokens received: {stats.tokens} ({stats.tokens / elapsed:.1f} tok/s), {stats.chunks} chunks with choices")
    print(f"latency p50 {percentile(stats.latency, 50):.2f} s, p95 {percentile(stats.latency, 95):.2f} s; "
          f"first text p50 {percentile(stats.ttft, 50):.2f} s, p95 {percentile(stats.ttft, 95):.2f} s")
    print(f"errors: {len(stats.errors)}")
    if opts.pid:
        lines, memory_failure = memory_verdict(samples, elapsed)
        print("\n".join(lines))
        if memory_failure:
            failures.append(memory_failure)
    failures += [f"{what}" + (f"\n      request: {request}" if request else "") for what, request in stats.errors]
    if failures:
        print(f"\nFAILED: {len(failures)} failure(s); the first 20:")
        for f in failures[:20]:
            print(f"  - {f}")
        return 1
    print("\nOK: every stream was well formed" + (", memory flat" if opts.pid else ""))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
