#!/usr/bin/env python3
"""Hostile-input check for `inference-server serve` (the OpenAI-compatible API).

    python3 Tests/Scripts/check_bad_input.py --base-url http://127.0.0.1:8080 [--count 2000] [--model NAME] [--pid PID]

Why: the server is exposed to arbitrary clients. Bad input must never crash it, hang it, leak
connections or sequences, or come back as a 5xx or as a 2xx; every error must be the OpenAI error body
that clients (the openai package, vLLM-style tooling) parse:

    HTTP 4xx, Content-Type: application/json,
    {"error": {"message": str, "type": str, "param": str|null, "code": <the HTTP status>}}

What it sends (loopback only, stdlib only, raw sockets so the bytes are exactly what we choose; the run
is bounded by --count and --time-limit), to POST /v1/completions and /v1/chat/completions mostly, and a
few to /tokenize, /detokenize, unknown paths and wrong methods:
  - non-object JSON (arrays, numbers, strings, null), truncated JSON (every prefix of valid bodies),
    JSON syntax errors, invalid UTF-8, deeply nested JSON (100000 '['), huge numbers;
  - a wrong type or an out-of-range value for each field (prompt, max_tokens, temperature, n, top_p,
    logprobs, stop, messages, roles, content, ...), unknown model (404), token ids outside the vocabulary;
  - prompts longer than the context and max_tokens past it (400 naming the context length);
  - a 10 MB body (413), and bodies cut off or declared bigger than sent;
  - HTTP-level garbage (bad request lines, bad Content-Length / chunked framing, random bytes): here the
    server may close the connection or answer a bare 400, and those are counted apart;
  - seeded fuzz: random bodies, byte mutations of valid bodies (a mutation that is still a valid request
    may get a 2xx, which must then be a well-formed answer), mutations of the raw HTTP bytes;
  - slow clients (requests dribbled byte by byte), idle connections, a client that never reads its
    stream, clients that send half a request and close: meanwhile the server must keep answering others;
  - a few near-limit (~3.4 MB) prompts at once: the server must keep answering /health meanwhile;
  - one request with 16 prompts x n=16 (256 sequences): other clients must still be served meanwhile
    (not refused with 429), and its sequences must stop when its client leaves.
Between batches and at the end: GET /health is 200 and a small completion (max_tokens 4, temperature 0)
returns 200 with one choice. At the end: no request is left running or waiting (/metrics), and with --pid:
the process is alive and holds no more file descriptors than before (no leaked connections).

Exits non-zero, listing the first 20 failures with the request that caused each, if any check failed."""
import argparse
import json
import os
import random
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict

# ----------------------------------------------------------------------------------------------------------
# options

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080 (loopback only)")
ap.add_argument("--count", type=int, default=2000, help="requests to send in the main run (default 2000)")
ap.add_argument("--model", help="model name the server answers to (default: the first of GET /v1/models)")
ap.add_argument("--pid", type=int, help="server process id: check it is alive and leaks no file descriptors")
ap.add_argument("--seed", type=int, default=1234, help="seed of the fuzzing RNG")
ap.add_argument("--time-limit", type=float, default=600, help="stop sending new cases after this many seconds")
ap.add_argument("--check-every", type=int, default=100, help="liveness check every this many cases")
ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for an answer to one request")
ap.add_argument("--max-stall", type=float, default=10,
                help="longest acceptable /health answer time while slow clients or big prompts are in progress")
ap.add_argument("--slow-clients", type=int, default=4, help="clients that dribble a request byte by byte")
ap.add_argument("--idle-connections", type=int, default=32, help="connections opened that send nothing")
ap.add_argument("--hog-clients", type=int, default=4,
                help="concurrent near-limit (~3.4 MB) prompts in the starvation check (0: skip it)")
ap.add_argument("--no-queue-check", action="store_true",
                help="skip the check that one 256-sequence request does not lock other clients out")
ap.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                help="skip the cases whose '[category] name' matches (repeatable), e.g. to get past a known crash")
ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
opts = ap.parse_args()

url = urllib.parse.urlsplit(opts.base_url)
HOST, PORT = url.hostname, url.port or 80
if HOST not in ("127.0.0.1", "localhost", "::1"):
    sys.exit("refusing to run against a non-loopback host: " + HOST)

START = time.monotonic()
rng = random.Random(opts.seed)

# ----------------------------------------------------------------------------------------------------------
# raw HTTP


class Reply:
    """One HTTP answer, or why there was none (outcome: 'closed', 'timeout', 'reset', 'refused', 'truncated')."""

    def __init__(self):
        self.status = None
        self.headers = {}
        self.body = b""
        self.outcome = None
        self.seconds = 0.0

    @property
    def label(self):
        return str(self.status) if self.status is not None else self.outcome

    def json(self):
        return json.loads(self.body)


def http_bytes(method, path, body=None, headers=None, version="HTTP/1.1"):
    """A request with Connection: close and, for a body, Content-Length (unless headers give framing)."""
    lines = [f"{method} {path} {version}", f"Host: {HOST}:{PORT}", "Connection: close"]
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
        if not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
            headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def post(path, body, headers=None):
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    return http_bytes("POST", path, bytes(body), headers)


def _parse_head(buffer):
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers, rest


def _dechunk(data):
    """(body, complete) of a chunked body read so far."""
    out, i = b"", 0
    while True:
        end = data.find(b"\r\n", i)
        if end < 0:
            return out, False
        size = int(data[i:end].split(b";")[0], 16)
        if size == 0:
            return out, True
        if len(data) < end + 2 + size + 2:
            return out, False
        out += data[end + 2:end + 2 + size]
        i = end + 2 + size + 2


def exchange(payload, timeout=None, half_close=False, dribble=0.0, read=True, method_head=False):
    """Sends `payload` on a new connection and reads one answer (skipping 1xx). Sending stops early if
    the server answers first (e.g. 413 before the whole body). `half_close` shuts our sending side after
    the payload (so the server sees EOF); `dribble` sends one byte every that many seconds."""
    timeout = timeout or opts.timeout
    reply = Reply()
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        s = socket.create_connection((HOST, PORT), timeout=5)
    except ConnectionRefusedError:
        reply.outcome = "refused"
        return reply
    except OSError as e:
        reply.outcome = f"connect failed: {e}"
        return reply
    buffer = b""
    try:
        s.setblocking(False)
        view, sent, step = memoryview(payload), 0, 1 if dribble else 65536
        server_spoke = False
        while sent < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reply.outcome = "timeout"
                return reply
            readable, writable, _ = select.select([s], [s], [], min(remaining, 1.0))
            if readable:  # an early answer (or close): stop sending and read it
                server_spoke = True
                break
            if writable:
                try:
                    sent += s.send(view[sent:sent + step])
                except (BrokenPipeError, ConnectionResetError):
                    server_spoke = True
                    break
                except BlockingIOError:
                    pass
                if dribble:
                    time.sleep(dribble)
        if half_close and not server_spoke:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if not read:
            reply.outcome = "not read"
            return reply
        status = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reply.outcome = "timeout" if status is None else f"timeout in the body of an HTTP {status}"
                reply.status = None
                break
            readable, _, _ = select.select([s], [], [], remaining)
            if not readable:
                continue
            try:
                data = s.recv(1 << 20)
            except ConnectionResetError:
                reply.outcome = "reset"
                break
            except BlockingIOError:
                continue
            if data:
                buffer += data
            # Parse what we have: skip 1xx answers, stop once the answer is complete.
            while b"\r\n\r\n" in buffer and status is None:
                status, headers, rest = _parse_head(buffer)
                if 100 <= status < 200:
                    buffer, status = rest, None
                    continue
                reply.status, reply.headers = status, headers
                buffer = rest
            if status is not None:
                if method_head or status in (204, 304):
                    break
                if "content-length" in reply.headers:
                    if len(buffer) >= int(reply.headers["content-length"]):
                        reply.body = buffer[:int(reply.headers["content-length"])]
                        break
                elif "chunked" in reply.headers.get("transfer-encoding", "").lower():
                    body, complete = _dechunk(buffer)
                    if complete:
                        reply.body = body
                        break
                elif not data:
                    reply.body = buffer
                    break
            if not data:
                if status is not None:  # closed before the announced body was complete
                    reply.outcome, reply.status = "truncated", None
                else:
                    reply.outcome = "closed"
                break
    except ValueError as e:
        reply.outcome = f"garbled answer ({e})"
    finally:
        s.close()
        reply.seconds = time.monotonic() - t0
    return reply


# ----------------------------------------------------------------------------------------------------------
# checks

failures = []  # (what, request description)
notes = Counter()  # accepted-but-noteworthy behaviours
per_category = defaultdict(Counter)
per_status = Counter()


def describe(payload, limit=300):
    text = repr(payload[:limit])
    return text + (f" ... ({len(payload)} bytes)" if len(payload) > limit else "")


def fail(what, request=""):
    failures.append((what, request))
    if opts.verbose or len(failures) <= 20:
        print(f"  FAIL {what}" + (f"\n       request: {request}" if request else ""), flush=True)


def error_shape_problem(reply):
    """None if the reply carries the OpenAI error body with code == status, else what is wrong."""
    ctype = reply.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        return f"Content-Type is {ctype!r}, not application/json"
    try:
        body = reply.json()
    except ValueError:
        return f"body is not JSON: {reply.body[:200]!r}"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f"no 'error' object: {reply.body[:200]!r}"
    if not isinstance(err.get("message"), str) or not err["message"]:
        return "error.message is not a non-empty string"
    if not isinstance(err.get("type"), str) or not err["type"]:
        return "error.type is not a non-empty string"
    if "param" not in err or not (err["param"] is None or isinstance(err["param"], str)):
        return "error.param is not a string or null"
    if err["param"] == "":
        notes["error.param is an empty string (null expected)"] += 1
    if type(err.get("code")) is not int or err["code"] != reply.status:
        return f"error.code {err.get('code')!r} is not the HTTP status {reply.status}"
    return None


def success_shape_problem(reply, path):
    """For inputs that may be valid: a 2xx must be a well-formed answer."""
    ctype = reply.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        events = [e for e in reply.body.decode("utf-8", "replace").split("\n\n") if e.strip()]
        if not events or events[-1].strip() != "data: [DONE]":
            return "event stream does not end with data: [DONE]"
        for e in events[:-1]:
            if not e.startswith("data: "):
                return f"event is not 'data: ...': {e[:100]!r}"
            chunk = json.loads(e[6:])
            if "error" in chunk:
                return f"stream carries an error event: {e[:200]!r}"
        return None
    if not ctype.startswith("application/json"):
        return f"2xx with Content-Type {ctype!r}"
    try:
        body = reply.json()
    except ValueError:
        return "2xx body is not JSON"
    if path.startswith("/v1/") and not (isinstance(body, dict) and isinstance(body.get("choices"), list)):
        return f"2xx body without choices: {reply.body[:200]!r}"
    return None


class Case:
    """One request and what may come back.

    kind: 'invalid'  valid HTTP, invalid input: a 4xx with the OpenAI error body (expect: allowed statuses)
          'maybe'    valid HTTP, input that may be acceptable: a 4xx error body or a well-formed 2xx
          'badhttp'  not valid HTTP: the server may close or answer a bare 4xx; never a 5xx or 2xx
          'half'     the client cuts the request short: any answer but a 5xx, or none"""

    def __init__(self, category, name, payload, kind="invalid", expect=None, message=None, timeout=None,
                 half_close=False, read=True, path="/v1/completions", allow_ok=False):
        self.category, self.name, self.payload, self.kind = category, name, payload, kind
        self.expect, self.message, self.timeout = expect, message, timeout
        self.half_close, self.read, self.path, self.allow_ok = half_close, read, path, allow_ok
        self.note_ok = None  # a note to count when a 'maybe' case gets a 2xx

    def request(self):
        return f"[{self.category}] {self.name}: {describe(self.payload)}"


def run_case(case):
    # Invalid framing may leave the server waiting for more bytes: half-close so that it sees the end.
    half_close = case.half_close or (case.kind == "badhttp" and not case.allow_ok)
    reply = exchange(case.payload, timeout=case.timeout, half_close=half_close, read=case.read)
    per_category[case.category][reply.label] += 1
    per_status[reply.label] += 1
    if opts.verbose:
        print(f"  {reply.label:>8} {reply.seconds:6.2f}s [{case.category}] {case.name}", flush=True)
    problem = judge(case, reply)
    if problem:
        fail(f"{problem} ({reply.seconds:.1f} s)", case.request())
    return reply


def judge(case, reply):
    status = reply.status
    if status is None:
        if reply.outcome == "refused":
            return "connection refused: the server is down"
        if case.kind in ("badhttp", "half"):
            notes[f"{case.kind}: no answer ({reply.outcome})"] += 1
            return None
        return f"no HTTP answer ({reply.outcome})"
    if status >= 500:
        return f"HTTP {status} (5xx) body={reply.body[:300]!r}"
    if case.kind == "half":
        if 200 <= status < 300:
            return success_shape_problem(reply, case.path)
        if reply.headers.get("content-type", "").startswith("application/json"):
            return error_shape_problem(reply)
        return None
    if 200 <= status < 300:
        if case.kind == "maybe" or case.allow_ok:
            if case.note_ok:
                notes[case.note_ok] += 1
            return success_shape_problem(reply, case.path)
        return f"HTTP {status} (2xx) for invalid input: {reply.body[:200]!r}"
    if not 400 <= status < 500:
        return f"HTTP {status}: neither a 4xx error nor a success"
    if case.expect and status not in case.expect:
        return f"HTTP {status}, expected {sorted(case.expect)}: {reply.body[:200]!r}"
    # CONNECT (authority-form) is answered by the HTTP layer with a 404 and no body: not an API request.
    if case.kind == "badhttp" and (not reply.headers.get("content-type", "").startswith("application/json")
                                   or not reply.body):
        notes["badhttp: bare 4xx without a JSON body"] += 1
        return None
    problem = error_shape_problem(reply)
    if problem:
        return problem
    if case.message and case.message not in reply.json()["error"]["message"]:
        return f"error message lacks {case.message!r}: {reply.json()['error']['message']!r}"
    return None


# ----------------------------------------------------------------------------------------------------------
# the model name, liveness and server-side state


def get(path):
    return exchange(http_bytes("GET", path), timeout=opts.timeout)


def model_name():
    reply = get("/v1/models")
    if reply.status != 200:
        sys.exit(f"GET /v1/models: {reply.label} {reply.body[:200]!r}")
    return reply.json()["data"][0]["id"]


SMALL = None  # set below, once the model name is known


def liveness(when):
    """GET /health is 200 and a small completion is 200 with one choice; returns the seconds /health took
    (the completion may wait behind other generation work, so it only has to come back in time)."""
    t0 = time.monotonic()
    reply = get("/health")
    health_seconds = time.monotonic() - t0
    if reply.status != 200:
        fail(f"liveness {when}: GET /health -> {reply.label} {reply.body[:200]!r}")
        return health_seconds
    reply = exchange(SMALL, timeout=max(opts.timeout, 120))
    if reply.status != 200:
        fail(f"liveness {when}: small completion -> {reply.label} {reply.body[:300]!r}", describe(SMALL))
    else:
        try:
            body = reply.json()
            ok = body["object"] == "text_completion" and len(body["choices"]) == 1 \
                and isinstance(body["choices"][0]["text"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            fail(f"liveness {when}: malformed completion {reply.body[:300]!r}", describe(SMALL))
    if opts.pid and not pid_alive():
        fail(f"liveness {when}: process {opts.pid} is gone")
    return health_seconds


def pid_alive():
    try:
        os.kill(opts.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{opts.pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def fd_count():
    try:
        return len(os.listdir(f"/proc/{opts.pid}/fd"))
    except OSError:
        return None


def rss_mib():
    try:
        with open(f"/proc/{opts.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None


def mib(value):
    return "?" if value is None else f"{value:.0f} MiB"


def metric_values():
    reply = get("/metrics")
    values = {}
    if reply.status == 200:
        for line in reply.body.decode("utf-8", "replace").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name.split("{")[0]] = float(value)
                except ValueError:
                    pass
    return values


# ----------------------------------------------------------------------------------------------------------
# the cases

C, CHAT, TOK, DETOK = "/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"


def structured_cases(model):
    cases = []
    completion = {"model": model, "prompt": "Hello", "max_tokens": 4}
    chat = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}

    def field_case(category, path, base, field, value, expect=None, message=None, kind="invalid", stream=False):
        body = dict(base)
        if value is DELETE:
            body.pop(field, None)
        else:
            body[field] = value
        if stream:
            body["stream"] = True
        text = json.dumps(body)
        name = f"{field}={json.dumps(value)[:80] if value is not DELETE else '(absent)'}" + (" stream" if stream else "")
        cases.append(Case(category, name, post(path, text), kind, expect, message, path=path))

    # Wrong types and out-of-range values, per field, both endpoints, each also with "stream": true (an
    # invalid streaming request must be refused before the event stream starts).
    shared = {
        "temperature": [-1, -1e-9, "hot", [1], {}, True, 1e7, 1e300],
        "top_p": [0, -0.5, 2, 1.0000001, "x", [0.5], True],
        "top_k": [-2, -100, "5", 1.5, 2**63, [1]],
        "min_p": [-0.1, 1.5, "x"],
        "n": [0, -1, 17, 1000, "2", 1.5, True, 2**63, [1]],
        "stop": [5, [1], [None], {"a": 1}, ["a"] * 257, ["x" * 1025], True, [["a"]]],
        "stop_token_ids": [[-1], [262144], [2**63], "1", [1.5], 5, [None]],
        "seed": ["1", 1.5, 2**64, True, [1]],
        "presence_penalty": [3, -3, "x", 1e300],
        "frequency_penalty": [3, -3, "x", 1e300],
        "repetition_penalty": [0, -1, "x", 1e300],
        "stream_options": ["x", 5, {"include_usage": "yes"}, {"continuous_usage_stats": 5}],
        "prompt_logprobs": [21, -1, "x", 1.5],
        "skip_special_tokens": ["no", 5],
        "ignore_eos": ["no", 5],
        "user": [5, {}],
        "model": [5, {}, ["x"], True],
        "include_stop_str_in_output": ["x", 5],
        "truncate_prompt_tokens": [0, -2, "x", 1.5],
        "return_tokens_as_token_ids": ["x", [True]],
        "min_tokens": [-1, "x", 10**6],
        "logit_bias": [{"x": 5}, {"1": "a"}, {"999999": 1}, {"-1": 1}, "x", 5],
        # Fields whose effect is not implemented: refused, never silently ignored.
        "best_of": [5, "x"],
        "bad_words": [["x"], 5],
        "allowed_token_ids": [[1], "x"],
        "response_format": [{"type": "json_object"}, {"type": "json_schema"}, "x", {}],
        "tools": [[{"type": "function"}], "x"],
        "guided_json": [{}, "x"],
        "guided_choice": [["a"]],
    }
    completion_only = {
        "prompt": [5, 1.5, True, None, {}, {"a": 1}, [], [[]], [1.5], ["a", 1], [[1], ["a"]], [None], [True],
                   [-1], [262144], [10**9], [[-5]], [[1, 2], [262144]], [2**31], [2**63], [2**64], [10**30],
                   [[1]] * 17, ["a"] * 17, [{"a": 1}], DELETE],
        "max_tokens": ["4", 4.5, True, 1e30, -1, -2**31, 2**63, 2**64, -2**63 - 1, [4], {}, "NaN"],
        "logprobs": [100, 21, -1, "5", True, 1.5, [1]],
        "echo": ["yes", 2, [True]],
        "suffix": ["x", 5],
        "add_special_tokens": ["x", 3],
    }
    chat_only = {
        "messages": [[], {}, "hi", 5, None, [5], ["hi"], [[]], [{}], [{"role": "user"}], [{"content": "hi"}],
                     [{"role": "wizard", "content": "hi"}], [{"role": 5, "content": "hi"}],
                     [{"role": None, "content": "hi"}], [{"role": "user", "content": 5}],
                     [{"role": "user", "content": {"a": 1}}], [{"role": "user", "content": [5]}],
                     [{"role": "user", "content": [{"text": "hi"}]}], [{"role": "user", "content": [{"type": 5}]}],
                     [{"role": "user", "content": [{"type": "image"}]}],
                     [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                     [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                     [{"role": "assistant", "content": "a"}], [{"role": "user", "content": "hi"}, 5], DELETE],
        "max_tokens": ["4", 4.5, True, 1e30, -1, 2**63, [4], "NaN"],
        "max_completion_tokens": ["4", 4.5, -1, 2**63, 10**6],
        "logprobs": ["yes", 5, [True]],
        "top_logprobs": [21, -1, "5", 1.5],
        "continue_final_message": ["x", 5],
        "add_generation_prompt": ["x", 2],
        "echo": ["yes"],
        "chat_template": ["{{ messages }}", 5],
    }
    for field, values in list(shared.items()) + list(completion_only.items()):
        for value in values:
            expect = {404} if field == "model" and isinstance(value, str) else None
            for stream in (False, True):
                field_case("field-types", C, completion, field, value, expect, stream=stream)
    for field, values in list(shared.items()) + list(chat_only.items()):
        for value in values:
            for stream in (False, True):
                field_case("field-types", CHAT, chat, field, value, stream=stream)

    # Combinations that are refused as a whole.
    combos = [
        (C, {**completion, "stream_options": {"include_usage": True}}),  # stream_options without stream
        (C, {**completion, "stream": True, "prompt_logprobs": 1}),
        (CHAT, {**chat, "top_logprobs": 5}),  # top_logprobs without logprobs
        (CHAT, {**chat, "stream_options": {"include_usage": True}}),
        (C, {**completion, "n": 16, "prompt": ["a"] * 16, "max_tokens": 32768}),
        (C, {**completion, "prompt": [[]]}),
    ]
    for path, body in combos:
        cases.append(Case("combinations", json.dumps(body)[:100], post(path, body), path=path))

    # Unknown model names -> 404.
    for name in ["nope", "", model + " ", model.upper(), "../" + model, "x" * 10000, "\u0000", "\u202e" + model]:
        cases.append(Case("unknown-model", f"completions model={name[:40]!r}", post(C, {**completion, "model": name}),
                          expect={404}))
        cases.append(Case("unknown-model", f"chat model={name[:40]!r}", post(CHAT, {**chat, "model": name}),
                          expect={404}, path=CHAT))
    cases.append(Case("unknown-model", "tokenize model=nope", post(TOK, {"model": "nope", "prompt": "x"}),
                      expect={404}, path=TOK))
    cases.append(Case("unknown-model", "detokenize model=nope", post(DETOK, {"model": "nope", "tokens": [1]}),
                      expect={404}, path=DETOK))

    # Longer than the context: 400 that names the context length.
    long_text = "hello " * 40000
    cases += [
        Case("context", "completions 40000-token prompt", post(C, {**completion, "prompt": long_text}),
             expect={400}, message="context length", timeout=120),
        Case("context", "chat 40000-token message", post(CHAT, {**chat, "messages": [{"role": "user", "content": long_text}]}),
             expect={400}, message="context length", timeout=120, path=CHAT),
        Case("context", "completions 40000 token ids", post(C, {**completion, "prompt": [9259] * 40000}),
             expect={400}, message="context length", timeout=120),
        Case("context", "completions max_tokens 10**6", post(C, {**completion, "max_tokens": 10**6}),
             expect={400}, message="context length"),
        Case("context", "completions max_tokens 2**62", post(C, {**completion, "max_tokens": 2**62}),
             expect={400}, message="context length"),
        # Int.max-sized values: prompt + max_tokens must not overflow (a trap would kill the process).
        Case("context", "completions max_tokens 2**63-1", post(C, {**completion, "max_tokens": 2**63 - 1}),
             expect={400}),
        Case("context", "completions max_tokens 2**63-2", post(C, {**completion, "max_tokens": 2**63 - 2}),
             expect={400}),
        Case("context", "completions token ids, max_tokens 2**63-2",
             post(C, {**completion, "prompt": [2, 9259, 9259], "max_tokens": 2**63 - 2}), expect={400}),
        Case("context", "chat max_tokens 2**63-1", post(CHAT, {**chat, "max_tokens": 2**63 - 1}),
             expect={400}, path=CHAT),
        Case("context", "chat max_completion_tokens 2**63-1", post(CHAT, {**chat, "max_completion_tokens": 2**63 - 1}),
             expect={400}, path=CHAT),
        Case("context", "chat max_tokens 10**6", post(CHAT, {**chat, "max_tokens": 10**6}),
             expect={400}, message="context length", path=CHAT),
        Case("context", "chat max_completion_tokens 10**6", post(CHAT, {**chat, "max_completion_tokens": 10**6}),
             expect={400}, message="context length", path=CHAT),
        Case("context", "chat 20001 short messages", post(CHAT, {**chat, "messages": [
            {"role": ["user", "assistant"][i % 2], "content": "hi"} for i in range(20001)]}),
            expect={400}, message="context length", timeout=120, path=CHAT),
    ]

    # Not a JSON object, and JSON syntax errors.
    not_objects = [b"[]", b"[1,2]", b'[{"prompt":"hi"}]', b"5", b"-1e999", b'"hello"', b"null", b"true", b"",
                   b" ", b"\r\n", b"{}", b"{", b"}", b'{"prompt"}', b'{"prompt":}', b'{"prompt":"hi",}',
                   b'{"prompt":["hi",],"max_tokens":2}',
                   b"{'prompt':'hi'}", b'{"prompt":"hi"} x', b'{"prompt":"hi"}{"prompt":"hi"}',
                   b'{"prompt":"hi" /* c */}', b'{"prompt":"hi","temperature":NaN}',
                   b'{"prompt":"hi","temperature":Infinity}', b'{"prompt":"hi","max_tokens":0x10}',
                   b'{"prompt":"hi","max_tokens":01}', b'{"prompt":"a\x00b"}', b'{"prompt":"a\nb"}',
                   b'{"prompt":"\\x41"}', b'{"prompt":"\\u12"}', b"prompt=hi&max_tokens=4", b"\x00" * 64,
                   b'{"prompt":"hi","max_tokens":' + b"9" * 100000 + b"}",
                   b'{"prompt":"hi","max_tokens":1' + b"0" * 400 + b"}", b'{"prompt":"hi","temperature":1e400}']
    for path in (C, CHAT):
        for body in not_objects:
            cases.append(Case("not-json-object", f"{path} body={body[:40]!r}", post(path, body), path=path))
    # Integral numbers written as floats: valid JSON, may be accepted as integers (pydantic does).
    for body in [b'{"prompt":"hi","max_tokens":-0.0e0}', b'{"prompt":"hi","max_tokens":4e0}',
                 b'{"prompt":"hi","max_tokens":2.0}']:
        cases.append(Case("not-json-object", f"body={body!r}", post(C, body), kind="maybe"))

    # Every prefix of valid bodies (truncated JSON; Content-Length matches what is sent).
    for path, body in [(C, completion), (CHAT, chat), (C, {**completion, "prompt": [1, 2, 3], "stop": ["a", "b"]}),
                       (CHAT, {**chat, "stream": True, "stream_options": {"include_usage": True}})]:
        text = json.dumps(body).encode()
        for cut in range(len(text)):
            cases.append(Case("truncated-json", f"{path} first {cut} of {len(text)} bytes", post(path, text[:cut]),
                              path=path))

    # Invalid UTF-8 (raw), and suspicious escapes (valid JSON text: may be accepted).
    bad_utf8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
                b"\xc3", b"\xe2\x82", b"abc\xf0\x9f\x98", b"\xf8\x88\x80\x80\x80"]
    for path, key in [(C, "prompt"), (CHAT, "content")]:
        for raw in bad_utf8:
            if key == "prompt":
                body = b'{"prompt":"' + raw + b'","max_tokens":4}'
            else:
                body = b'{"messages":[{"role":"user","content":"' + raw + b'"}],"max_tokens":4}'
            cases.append(Case("invalid-utf8", f"{path} {key} with {raw!r}", post(path, body), path=path))
        cases.append(Case("invalid-utf8", f"{path} key with \\xff", post(path, b'{"\xff":1,"prompt":"hi"}'), path=path))
        cases.append(Case("invalid-utf8", f"{path} \\xa8 in the value of an unknown key",
                          post(path, b'{"x":"\xa8",' + json.dumps(completion if path == C else chat).encode()[1:]),
                          path=path))
    for escape in [b"\\ud800", b"\\udfff", b"\\ud800\\ud800", b"\\u0000", b"\\uffff"]:
        cases.append(Case("invalid-utf8", f"prompt with escape {escape!r}",
                          post(C, b'{"prompt":"a' + escape + b'b","max_tokens":2}'), kind="maybe"))
    cases.append(Case("invalid-utf8", "UTF-8 BOM before the body", post(C, b'\xef\xbb\xbf{"prompt":"hi","max_tokens":2}'),
                      kind="maybe"))
    cases.append(Case("invalid-utf8", "UTF-16 body", post(C, '{"prompt":"hi","max_tokens":2}'.encode("utf-16")),
                      kind="maybe"))

    # Deep nesting.
    for path, text in [
        (C, b"[" * 100000), (C, b'{"a":' * 100000), (C, b'{"prompt":' + b"[" * 100000 + b"]" * 100000 + b"}"),
        (C, b'{"prompt":"hi","stop":' + b"[" * 50000 + b"]" * 50000 + b"}"),
        (CHAT, b'{"messages":[{"role":"user","content":' + b"[" * 100000 + b"]" * 100000 + b"}]}"),
        (CHAT, b'{"messages":' + b'[{"role":"user","content":' * 20000 + b'"x"' + b"}]" * 20000 + b"}"),
        (C, b'{"prompt":"hi","x":' + b"[" * 100000 + b"]" * 100000 + b"}"),  # in an ignored field
        (C, b'{"prompt":"hi","x":' + b'{"a":' * 100000 + b"1" + b"}" * 100000 + b"}"),
        (TOK, b'{"prompt":' + b"[" * 100000 + b"}"), (DETOK, b'{"tokens":' + b"[" * 100000 + b"}"),
    ]:
        cases.append(Case("deep-nesting", f"{path} {text[:30]!r}... ({len(text)} bytes)", post(path, text),
                          path=path, timeout=60, kind="maybe" if b'"x":' in text else "invalid"))

    # Oversized bodies.
    ten_mb = b'{"prompt":"' + b"a" * (10 << 20) + b'"}'
    cases += [
        Case("oversized", "10 MB completions body", post(C, ten_mb), expect={413}, timeout=60),
        Case("oversized", "10 MB chat body", post(CHAT, b'{"messages":[{"role":"user","content":"' + b"a" * (10 << 20)
                                                        + b'"}]}'), expect={413}, timeout=60, path=CHAT),
        Case("oversized", "10 MB of spaces", post(C, b" " * (10 << 20)), expect={413}, timeout=60),
        Case("oversized", "10 MB chunked", http_bytes("POST", C, _chunked(ten_mb, 1 << 16),
                                                      {"Transfer-Encoding": "chunked"}), expect={413}, timeout=60),
        Case("oversized", "Content-Length 10**12, headers only", http_bytes("POST", C, b"", {"Content-Length": str(10**12)}),
             kind="half", half_close=True, timeout=10),
        Case("oversized", "100000 unknown keys", post(C, "{" + ",".join(f'"k{i}":{i}' for i in range(100000))
                                                        + ',"prompt":"hi","max_tokens":2}'), kind="maybe", timeout=60),
        Case("oversized", "a 1 MB key", post(C, '{"' + "k" * (1 << 20) + '":1,"prompt":"hi","max_tokens":2}'),
             kind="maybe", timeout=60),
        Case("oversized", "200000 stop strings", post(C, {**completion, "stop": ["ab"] * 200000}), timeout=60),
        Case("oversized", "300000 stop token ids", post(C, {**completion, "stop_token_ids": [1] * 300000}),
             kind="maybe", timeout=60),
        Case("oversized", "500000 prompt lists", post(C, {**completion, "prompt": [[1]] * 500000}), timeout=60),
        Case("oversized", "200000 detokenize ids out of range", post(DETOK, {"tokens": [10**9] * 200000}),
             timeout=60, path=DETOK),
    ]

    # /tokenize and /detokenize.
    for body in [{"prompt": 5}, {}, {"messages": []}, {"messages": "x"}, {"messages": [{"role": "wizard", "content": "x"}]},
                 {"prompt": "x", "add_special_tokens": "yes"}, [], {"prompt": ["a"]}]:
        cases.append(Case("tokenize", json.dumps(body)[:60], post(TOK, body), path=TOK))
    for body in [{"tokens": [-1]}, {"tokens": [262144]}, {"tokens": [2**63]}, {"tokens": "x"}, {}, {"tokens": [1.5]},
                 {"tokens": [[1]]}, {"tokens": None}, 5]:
        cases.append(Case("detokenize", json.dumps(body)[:60], post(DETOK, body), path=DETOK))
    for body in [b"{", b"\xff", b"null"]:
        cases.append(Case("tokenize", f"body {body!r}", post(TOK, body), path=TOK))
        cases.append(Case("detokenize", f"body {body!r}", post(DETOK, body), path=DETOK))

    # Unknown paths and wrong methods.
    for method, path in [("GET", C), ("PUT", C), ("DELETE", C), ("PATCH", C), ("OPTIONS", C), ("GET", CHAT),
                         ("PUT", CHAT), ("DELETE", CHAT), ("POST", "/health"), ("POST", "/v1/models"),
                         ("DELETE", "/v1/models"), ("GET", TOK), ("GET", DETOK), ("POST", "/metrics")]:
        body = json.dumps(completion).encode() if method in ("POST", "PUT", "PATCH") else None
        cases.append(Case("wrong-method", f"{method} {path}", http_bytes(method, path, body), expect={404, 405},
                          path=path))
    for path in ["/v1/nothing", "/v1/completions/extra", "/v1/completion", "/V1/COMPLETIONS", "/../../etc/passwd",
                 "/v1/%2e%2e/%2e%2e/etc/passwd", "/%00", "/v1/completions%00", "/" + "a" * 60000, "/v2/completions",
                 "/v1/chat/completions/../../x"]:
        cases.append(Case("unknown-path", f"POST {path[:60]}", http_bytes("POST", path, json.dumps(completion).encode()),
                          expect={400, 404, 414, 431}, path=path))
    for path in ["/v1//completions", "/v1/completions/", "/v1/./completions"]:  # may be normalized
        cases.append(Case("unknown-path", f"POST {path}", http_bytes("POST", path, json.dumps(completion).encode()),
                          kind="maybe", path=path))
    cases.append(Case("unknown-path", "query string junk", http_bytes("POST", C + "?x=%zz&&=&" + "q" * 5000,
                                                                     json.dumps(completion).encode()), kind="maybe"))

    # Request framing that is not valid HTTP: close or a bare 4xx are fine.
    valid = json.dumps(completion).encode()
    head = f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    framing = {
        "negative Content-Length": head + "Content-Length: -5\r\n\r\n",
        "non-numeric Content-Length": head + "Content-Length: ten\r\n\r\n",
        "two different Content-Lengths": head + f"Content-Length: {len(valid)}\r\nContent-Length: 3\r\n\r\n",
        "Content-Length and chunked": head + f"Content-Length: {len(valid)}\r\nTransfer-Encoding: chunked\r\n\r\n",
        "bad chunk size": head + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "chunk size overflow": head + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "unknown transfer coding": head + "Transfer-Encoding: gzip\r\n\r\n",
        "HTTP/9.9": f"POST {C} HTTP/9.9\r\nHost: x\r\nContent-Length: {len(valid)}\r\n\r\n",
        "no version": f"POST {C}\r\n\r\n",
        "spaces only": "     \r\n\r\n",
        "header without colon": head + "NoColonHere\r\n" + f"Content-Length: {len(valid)}\r\n\r\n",
        "NUL in a header": head + "X-A: a\x00b\r\n" + f"Content-Length: {len(valid)}\r\n\r\n",
        "header name with space": head + "Bad Name: x\r\n" + f"Content-Length: {len(valid)}\r\n\r\n",
        "obs-fold": head + "X-A: a\r\n  folded\r\n" + f"Content-Length: {len(valid)}\r\n\r\n",
        "100 KB header": head + "X-Big: " + "b" * 100000 + f"\r\nContent-Length: {len(valid)}\r\n\r\n",
        "10000 headers": head + "".join(f"X-{i}: {i}\r\n" for i in range(10000)) + f"Content-Length: {len(valid)}\r\n\r\n",
        "HTTP/2 preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "CONNECT": "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
        "method with control char": f"PO\x01ST {C} HTTP/1.1\r\nHost: x\r\n\r\n",
        "space in target": f"POST /v1/comp letions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(valid)}\r\n\r\n",
    }
    for name, text in framing.items():
        payload = text.encode("latin-1") + (valid if name not in ("bad chunk size", "chunk size overflow") else b"")
        cases.append(Case("bad-http", name, payload, kind="badhttp", timeout=10))
    cases.append(Case("bad-http", "TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + bytes(range(256)) * 2,
                      kind="badhttp", timeout=10))
    # Unusual but parseable framing: may be served normally.
    maybe_http = {
        "bare LF line ends": f"POST {C} HTTP/1.1\nHost: x\nContent-Length: {len(valid)}\nConnection: close\n\n",
        "HTTP/1.0": f"POST {C} HTTP/1.0\r\nContent-Length: {len(valid)}\r\n\r\n",
        "absolute-form target": f"POST http://{HOST}:{PORT}{C} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                f"Content-Length: {len(valid)}\r\n\r\n",
        "lowercase method": f"post {C} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(valid)}\r\n\r\n",
        "Expect: 999-bogus (417 or served)": head + f"Connection: close\r\nExpect: 999-bogus\r\nContent-Length: {len(valid)}\r\n\r\n",
        "Expect: 100-continue": head + f"Connection: close\r\nExpect: 100-continue\r\nContent-Length: {len(valid)}\r\n\r\n",
        "no Host": f"POST {C} HTTP/1.1\r\nConnection: close\r\nContent-Length: {len(valid)}\r\n\r\n",
        "Content-Type text/plain": f"POST {C} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                                   f"Content-Length: {len(valid)}\r\n\r\n",
        "Content-Encoding gzip (not gzipped)": head + f"Connection: close\r\nContent-Encoding: gzip\r\n"
                                                      f"Content-Length: {len(valid)}\r\n\r\n",
        "valid chunked body": head + "Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
    }
    for name, text in maybe_http.items():
        body = _chunked(valid, 7) if "chunked" in name else valid
        cases.append(Case("odd-http", name, text.encode("latin-1") + body, kind="badhttp", allow_ok=True, timeout=30))

    # Clients that send half a request and close without reading (no answer expected), or that close
    # their sending side (half-close) and wait for the answer.
    cut = [
        ("half the request line", f"POST {C} HT".encode()),
        ("headers without the blank line", (head + "Content-Length: 30\r\n").encode()),
        ("10 of 100 body bytes", (head + "Content-Length: 100\r\n\r\n").encode() + valid[:10]),
        ("chunked without the last chunk", (head + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"pro\r\n").encode()),
        ("full request", post(C, {**completion, "max_tokens": 32})),
        ("full streaming request", post(C, {**completion, "max_tokens": 32, "stream": True})),
        ("full chat request", post(CHAT, {**chat, "max_tokens": 32})),
    ]
    for name, payload in cut:
        for _ in range(3):
            cases.append(Case("half-request", name + ", close without reading", payload, kind="half", read=False))
        # Half-closed: the server may answer (a cut-off request: 4xx; a complete one may be served, as HTTP
        # allows) or take the half-close as the client leaving and close; never a 5xx.
        cases.append(Case("half-request", name + ", half-close, wait for the answer", payload, kind="half",
                          half_close=True, timeout=120))
    return cases


class _Delete:
    def __repr__(self):
        return "(absent)"


DELETE = _Delete()


def _chunked(data, size):
    out = b""
    for i in range(0, len(data), size):
        piece = data[i:i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def fuzz_case(model, i):
    """A seeded random case: random body bytes, a mutated valid body, or mutated/random HTTP bytes."""
    completion = {"model": model, "prompt": "Hello there", "max_tokens": 2}
    chat = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    roll = rng.random()
    path, base = (C, completion) if rng.random() < 0.5 else (CHAT, chat)
    if rng.random() < 0.3:
        base = {**base, "stream": True}
    if roll < 0.25:  # random bytes as the body of a valid request: never valid input
        body = rng.randbytes(rng.randint(0, 3000))
        return Case("fuzz-body", f"{path} random body #{i}", post(path, body), path=path)
    if roll < 0.7:  # mutate a valid body; if it no longer parses as JSON it must be refused
        body = bytearray(json.dumps(base).encode())
        for _ in range(rng.randint(1, 6)):
            op, at = rng.random(), rng.randrange(len(body) + 1)
            if op < 0.35 and at < len(body):
                body[at] = rng.randrange(256)
            elif op < 0.7:
                body[at:at] = bytes([rng.choice(b'{}[]",:0123456789-e.truefalsnl \\\x00\xff\xc3')])
            elif at < len(body):
                del body[at:at + rng.randint(1, 4)]
        body = bytes(body)
        note = None
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = ValueError
            try:  # invalid only for its UTF-8? (the server is known to skip unknown keys unchecked)
                lenient = json.loads(body.decode("utf-8", "replace"))
                if isinstance(lenient, dict):
                    parsed, note = lenient, "2xx for a fuzzed body valid but for invalid UTF-8 (lenient)"
            except ValueError:
                pass
        kind = "invalid"
        if isinstance(parsed, dict):
            # Possibly a valid request: keep it cheap, or make sure it is refused.
            mt = parsed.get("max_tokens", None)
            n = parsed.get("n", 1)
            if type(mt) is int and 0 <= mt <= 8 and (type(n) is not int or n <= 4):
                kind = "maybe"
            else:
                return fuzz_case(model, i)  # could be an expensive valid request: draw again
        elif parsed is not ValueError:
            kind = "invalid"  # valid JSON but not an object
        case = Case("fuzz-mutation", f"{path} mutated body #{i}", post(path, body), kind=kind, path=path)
        case.note_ok = note
        return case
    if roll < 0.85:  # mutate the raw HTTP bytes of a valid request
        raw = bytearray(post(path, json.dumps(base)))
        end = raw.find(b"\r\n\r\n")
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(end + 4)
            if rng.random() < 0.5:
                raw[at] = rng.randrange(256)
            else:
                raw[at:at] = bytes([rng.choice(b" :\r\n\t\x00\xffA0")])
        return Case("fuzz-http", f"mutated HTTP #{i}", bytes(raw), kind="badhttp", allow_ok=True, timeout=10)
    return Case("fuzz-garbage", f"random bytes #{i}", rng.randbytes(rng.randint(1, 4000)), kind="badhttp", timeout=10)


# ----------------------------------------------------------------------------------------------------------
# slow clients, idle connections, a reader that stalls


class SlowClient(threading.Thread):
    """Sends an invalid request one byte at a time; records the answer."""

    def __init__(self, index, payload, delay):
        super().__init__(daemon=True)
        self.index, self.payload, self.delay, self.reply = index, payload, delay, None

    def run(self):
        self.reply = exchange(self.payload, timeout=len(self.payload) * self.delay * 3 + 30, dribble=self.delay)


def open_idle(count):
    conns = []
    for _ in range(count):
        try:
            conns.append(socket.create_connection((HOST, PORT), timeout=5))
        except OSError as e:
            fail(f"could not open idle connection {len(conns)}: {e}")
            break
    return conns


def stalled_reader(model):
    """A streaming request whose client never reads: the server must go on serving others."""
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(post(C, {"model": model, "prompt": "Tell me a long story.", "max_tokens": 256, "stream": True}))
    return s


def hog_check(model):
    """Near-limit prompts (~3.4 MB of text each, under the 4 MiB body limit) sent at once must each get a
    400 naming the context length, and /health must keep answering quickly meanwhile."""
    text = "The quick brown fox, jumps! 12345 " * 100000
    payload = post(C, {"model": model, "prompt": text, "max_tokens": 4})
    replies = [None] * opts.hog_clients

    def send(k):
        replies[k] = exchange(payload, timeout=300)

    threads = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(opts.hog_clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    worst = 0.0
    polls = 0
    while any(t.is_alive() for t in threads) and polls < 200:
        t0 = time.monotonic()
        reply = exchange(http_bytes("GET", "/health"), timeout=300)
        took = time.monotonic() - t0
        worst = max(worst, took)
        polls += 1
        if reply.status != 200:
            fail(f"hog: GET /health -> {reply.label} while {opts.hog_clients} big prompts were processed")
            break
        time.sleep(0.5)
    for t in threads:
        t.join(310)
    case = Case("hog", f"{opts.hog_clients} concurrent ~3.4 MB prompts", payload, expect={400, 413},
                message=None, timeout=300)
    for r in replies:
        per_category["hog"][r.label if r else "none"] += 1
        problem = judge(case, r) if r else "no reply"
        if problem:
            fail(f"hog: {problem}", case.request())
    secs = [f"{r.seconds:.1f}" for r in replies if r]
    print(f"  hog: {opts.hog_clients} x {len(payload) / 1e6:.1f} MB prompts answered "
          f"{[r.label for r in replies if r]} in {secs} s; slowest /health meanwhile {worst:.1f} s ({polls} polls)")
    if worst > opts.max_stall:
        fail(f"hog: GET /health took {worst:.1f} s (> {opts.max_stall} s) while {opts.hog_clients} "
             f"near-limit prompts were being processed: the server stalls", case.request())


def queue_monopoly_check(model):
    """One request may ask for 16 prompts x n=16 = 256 sequences (each limit is allowed on its own). While it
    runs, other clients must still be served (not all refused with 429), and once its client leaves, all its
    sequences must stop."""
    body = {"model": model, "prompt": ["Once upon a time"] * 16, "n": 16, "max_tokens": 2000, "stream": True}
    payload = post(C, body)
    try:
        big = socket.create_connection((HOST, PORT), timeout=30)
    except OSError as e:
        fail(f"queue: cannot connect: {e}")
        return
    try:
        big.sendall(payload)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                data = big.recv(4096)
                if not data:
                    break
                head += data
        except OSError as e:
            fail(f"queue: no answer to the 256-sequence request ({e})", describe(payload))
            return
        status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
        per_category["queue-monopoly"][f"big request {status}"] += 1
        if status != "200":
            notes[f"queue check skipped: the 256-sequence request got {status}"] += 1
            return
        time.sleep(1.0)
        reply = exchange(SMALL, timeout=60)
        per_category["queue-monopoly"][f"small request {reply.label}"] += 1
        print(f"  queue: with one 16-prompt x n=16 request running, a small completion got {reply.label} "
              f"in {reply.seconds:.1f} s", flush=True)
        if reply.status != 200:
            fail(f"queue: while one request with 16 prompts x n=16 (256 sequences) runs, a small completion gets "
                 f"{reply.label}: {reply.body[:160]!r}", describe(payload))
    finally:
        big.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metric_values()
        if (m.get("vllm:num_requests_running"), m.get("vllm:num_requests_waiting")) == (0.0, 0.0):
            return
        time.sleep(0.5)
    fail(f"queue: 30 s after the client of the 256-sequence request left, /metrics shows "
         f"{m.get('vllm:num_requests_running')} running, {m.get('vllm:num_requests_waiting')} waiting", describe(payload))


# ----------------------------------------------------------------------------------------------------------
# main


def main():
    global SMALL
    model = opts.model or model_name()
    SMALL = post(C, {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    print(f"server {opts.base_url}, model {model!r}, seed {opts.seed}")
    liveness("at the start")
    fds_before = fd_count() if opts.pid else None
    rss_before = rss_mib() if opts.pid else None

    cases = structured_cases(model)
    if opts.exclude:
        pattern = re.compile("|".join(f"(?:{x})" for x in opts.exclude))
        cases = [c for c in cases if not pattern.search(f"[{c.category}] {c.name}")]
    if opts.count < len(cases):
        cases = rng.sample(cases, opts.count)
    else:
        cases += [fuzz_case(model, i) for i in range(opts.count - len(cases))]
    rng.shuffle(cases)
    print(f"{len(cases)} cases ({Counter(c.category for c in cases).most_common()})", flush=True)

    # Slow clients, idle connections and a stalled reader run while the cases are sent.
    slow_payloads = [post(C, {"model": model, "prompt": 5}), post(CHAT, {"messages": "x"}),
                     post(C, b'{"prompt":"hi","max_tokens":"4"}'), post(CHAT, b"[1,2,3]")]
    slow = [SlowClient(k, slow_payloads[k % len(slow_payloads)], 0.08) for k in range(opts.slow_clients)]
    for t in slow:
        t.start()
    idle = open_idle(opts.idle_connections)
    stalled = stalled_reader(model)
    time.sleep(1.0)
    took = liveness("while slow clients, idle connections and a stalled reader are connected")
    print(f"  GET /health with {len(slow)} slow clients, {len(idle)} idle connections, 1 stalled reader connected: "
          f"{took:.2f} s")
    if took > opts.max_stall:
        fail(f"GET /health took {took:.1f} s while slow clients were connected (> {opts.max_stall} s)")

    sent, server_down = 0, False
    recent = []  # (case, answer label) of the last few cases, to name the one that brought the server down
    for index, case in enumerate(cases):
        if time.monotonic() - START > opts.time_limit:
            print(f"  time limit reached after {index} cases", flush=True)
            notes["time limit reached before all cases were sent"] += 1
            break
        reply = run_case(case)
        sent += 1
        recent = (recent + [(case, reply.label)])[-4:]
        if reply.outcome == "refused":
            # The culprit is usually the first of the last cases that got no answer (closed, reset).
            unanswered = [c for c, label in recent[:-1] if label in ("closed", "reset", "truncated")]
            culprit = unanswered[0] if unanswered else (recent[-2][0] if len(recent) > 1 else None)
            fail("the server went down (connections refused"
                 + (f", process {opts.pid} gone" if opts.pid and not pid_alive() else "") + "); last cases: "
                 + "; ".join(f"{c.category}/{c.name} -> {label}" for c, label in recent),
                 "most likely " + (culprit.request() if culprit else "(none)"))
            server_down = True
            break
        if (index + 1) % opts.check_every == 0:
            took = liveness(f"after case {index + 1}")
            print(f"  {index + 1}/{len(cases)} sent, {len(failures)} failures, GET /health {took:.2f} s"
                  + (f", fds {fd_count()}, RSS {mib(rss_mib())}" if opts.pid else ""), flush=True)

    for t in slow:
        t.join(120)
        r = t.reply
        label = r.label if r else "still running"
        per_category["slow-client"][label] += 1
        if r is None:
            fail(f"slow client {t.index}: no outcome after waiting", describe(t.payload))
        elif r.status is None:
            notes[f"slow client closed by the server ({r.outcome})"] += 1
        else:
            problem = judge(Case("slow-client", "", t.payload), r)
            if problem:
                fail(f"slow client {t.index}: {problem}", describe(t.payload))
    for s in idle:
        s.close()
    stalled.close()

    if server_down:
        return summary(sent)
    if opts.hog_clients > 0 and time.monotonic() - START < opts.time_limit:
        hog_check(model)
    if not opts.no_queue_check:
        queue_monopoly_check(model)

    # The end: everything settles, nothing leaked.
    time.sleep(2)
    liveness("at the end")
    deadline = time.monotonic() + 30
    while True:
        m = metric_values()
        running, waiting = m.get("vllm:num_requests_running"), m.get("vllm:num_requests_waiting")
        if (running, waiting) == (0.0, 0.0) or time.monotonic() > deadline:
            break
        time.sleep(1)
    if (running, waiting) != (0.0, 0.0):
        fail(f"30 s after the last request, /metrics shows {running} running and {waiting} waiting requests")
    if opts.pid:
        if not pid_alive():
            fail(f"process {opts.pid} is not alive at the end")
        fds_after = fd_count()
        deadline = time.monotonic() + 20
        while fds_after is not None and fds_before is not None and fds_after > fds_before + 16 \
                and time.monotonic() < deadline:
            time.sleep(1)
            fds_after = fd_count()
        print(f"server fds: {fds_before} before, {fds_after} after; RSS {mib(rss_before)} -> {mib(rss_mib())}")
        if fds_after is not None and fds_before is not None and fds_after > fds_before + 16:
            fail(f"the server holds {fds_after} file descriptors, {fds_before} before the run: connections leak")

    return summary(sent)


def summary(sent):
    print(f"\n{sent} cases sent in {time.monotonic() - START:.0f} s")
    print("per category (answer -> count):")
    for category in sorted(per_category):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(per_category[category].items()))
        print(f"  {category:16} {counts}")
    print("per answer: " + ", ".join(f"{k}: {v}" for k, v in sorted(per_status.items())))
    if notes:
        print("accepted, noted:")
        for what, n in sorted(notes.items()):
            print(f"  {n:5} x {what}")
    if failures:
        print(f"\nFAILED: {len(failures)} check(s) failed; the first 20:")
        for what, request in failures[:20]:
            print(f"  - {what}" + (f"\n      request: {request}" if request else ""))
        return 1
    print("\nOK: every answer was a well-formed 4xx (or an accepted close), and the server kept serving")
    return 0


if __name__ == "__main__":
    sys.exit(main())
