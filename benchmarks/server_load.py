#!/usr/bin/env python3
"""Load generator for benchmarks/server.sh: streaming /v1/completions at fixed concurrency.

For one server (already running) and each concurrency C: C client tasks each send streaming
POST /v1/completions requests back to back (a fixed prompt, max_tokens, temperature 0) for a fixed
wall-time window. It measures:

  - aggregate tok/s: generated tokens whose SSE chunk arrived inside the window, divided by the
    window. Requests that are in flight at the end of the window run to completion (the server is
    left idle before the next C), but their tokens after the window do not count.
  - TTFT p50/p99: request send (before connect) to the first SSE chunk with non-empty text, over
    every request started inside the window (queueing in the server included).
  - the longest gap between two content chunks of one request (a stall detector).

Token counting: one token per content chunk as it arrives; when the request ends, the count is made
exact from `usage.completion_tokens` (stream_options.include_usage, where the server sends it) or,
for finish_reason "length", from max_tokens; the difference (tokens whose text was held back or
merged into one chunk) is put on the last chunk's arrival time.

It also checks the stream: HTTP 200, `data: ` lines that parse as JSON, no error objects, exactly one
finish_reason, `data: [DONE]` at the end; and, since decoding is greedy, that every request got the
same text (a batching bug shows up as different texts under concurrency). Anything odd is listed in
the JSON result under "anomalies" (capped) and counted.

Only the Python standard library: HTTP/1.1 over asyncio streams (Connection: close, chunked
transfer decoding), loopback only.

Usage: server_load.py --port P --label ours --out result.json [--concurrency 1,4,16]
           [--duration 20] [--max-tokens 64] [--ignore-eos] [--include-usage] [--model NAME]
           [--extra JSON]  (fields merged into every request body)
           [--metrics]   (scrape our /metrics before/after each C: server-side token count)
           [--server-pid PID]  (CPU cores used by the server, this client and every other process
                                during each C, from /proc: other work on the machine skews the figures)
"""
import argparse
import asyncio
import json
import os
import statistics
import sys
import time

PROMPT = ("The history of the printing press begins in the fifteenth century, when a goldsmith "
          "in the city of Mainz")


class Anomalies:
    def __init__(self, cap=40):
        self.items, self.count, self.cap = [], 0, cap

    def add(self, kind, detail):
        self.count += 1
        if len(self.items) < self.cap:
            self.items.append({"kind": kind, "detail": str(detail)[:400]})


async def read_status_and_headers(reader):
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before the status line")
    parts = status_line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """Yields the body's bytes as they arrive (chunked transfer decoding or until close)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers until the empty line
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def http_get(port, path, timeout=10):
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status, headers = await asyncio.wait_for(read_status_and_headers(reader), timeout)
        body = b""
        async for part in body_chunks(reader, headers):
            body += part
        return status, body
    finally:
        writer.close()


async def one_request(port, payload, t_origin, anomalies, max_tokens):
    """One streaming completion. Returns a dict with timings (seconds since t_origin)."""
    body = json.dumps(payload).encode()
    t_send = time.perf_counter()
    rec = {"start": t_send - t_origin, "ttft": None, "events": [], "tokens": 0, "text": "", "ok": False,
           "finish": None, "max_gap": 0.0}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
        await writer.drain()
        status, headers = await read_status_and_headers(reader)
        if status != 200:
            text = b""
            async for part in body_chunks(reader, headers):
                text += part
            anomalies.add("http_status", f"{status}: {text[:300]!r}")
            return rec
        if "text/event-stream" not in headers.get("content-type", ""):
            anomalies.add("content_type", headers.get("content-type"))
        buf = b""
        done = False
        finishes = 0
        usage_tokens = None
        last_content = None
        async for part in body_chunks(reader, headers):
            now = time.perf_counter()
            buf += part
            # SSE events are separated by a blank line; accept \r\n too.
            buf = buf.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data_lines = []
                for line in event.split(b"\n"):
                    if line.startswith(b":") or not line:
                        continue  # comment / ping
                    if line.startswith(b"data:"):
                        data_lines.append(line[5:].lstrip(b" "))
                    elif line.split(b":", 1)[0] in (b"event", b"id", b"retry"):
                        continue
                    else:
                        anomalies.add("sse_line", line[:200])
                if not data_lines:
                    continue
                data = b"\n".join(data_lines)
                if done:
                    anomalies.add("after_done", data[:200])
                    continue
                if data == b"[DONE]":
                    done = True
                    continue
                try:
                    obj = json.loads(data)
                except ValueError:
                    anomalies.add("bad_json", data[:200])
                    continue
                if "error" in obj:
                    anomalies.add("error_event", obj["error"])
                    continue
                if obj.get("usage"):
                    usage_tokens = obj["usage"].get("completion_tokens")
                for choice in obj.get("choices") or []:
                    text = choice.get("text")
                    if text is None:
                        anomalies.add("no_text_field", obj)
                        text = ""
                    if text:
                        if rec["ttft"] is None:
                            rec["ttft"] = now - t_send
                        if last_content is not None:
                            rec["max_gap"] = max(rec["max_gap"], now - last_content)
                        last_content = now
                        rec["events"].append([now - t_origin, 1])
                        rec["text"] += text
                    if choice.get("finish_reason"):
                        finishes += 1
                        rec["finish"] = choice["finish_reason"]
        if buf.strip():
            anomalies.add("trailing_bytes", buf[:200])
        if not done:
            anomalies.add("no_done", f"stream ended without [DONE] after {len(rec['events'])} chunks")
        if finishes != 1:
            anomalies.add("finish_count", f"{finishes} finish_reason values")
        counted = len(rec["events"])
        exact = usage_tokens
        if exact is None and rec["finish"] == "length":
            exact = max_tokens
        if exact is not None and rec["events"]:
            rec["events"][-1][1] += exact - counted
        rec["tokens"] = exact if exact is not None else counted
        rec["ok"] = done and finishes == 1
        return rec
    except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        anomalies.add("connection", repr(e))
        return rec
    finally:
        writer.close()


def cpu_snapshot(server_pid):
    """(system busy seconds, server process seconds, this process seconds, wall) for contention checks."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / tick  # minus idle and iowait
    server = 0.0
    if server_pid:
        try:
            with open(f"/proc/{server_pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            server = (int(st[11]) + int(st[12])) / tick
        except OSError:
            pass
    t = os.times()
    return busy, server, t.user + t.system, time.perf_counter()


def cpu_report(a, b):
    wall = b[3] - a[3]
    n = os.cpu_count() or 1
    return {"server_cores": (b[1] - a[1]) / wall, "client_cores": (b[2] - a[2]) / wall,
            "other_cores": max(0.0, ((b[0] - a[0]) - (b[1] - a[1]) - (b[2] - a[2])) / wall), "cpus": n}


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def scrape_tokens(port):
    try:
        status, body = await http_get(port, "/metrics")
    except Exception:
        return None
    if status != 200:
        return None
    out = {}
    for line in body.decode().splitlines():
        for name in ("vllm:generation_tokens_total", "vllm:num_requests_running", "vllm:num_requests_waiting",
                     "inference_server:aborted_requests_total"):
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def run_level(args, c, anomalies):
    payload = {"model": args.model, "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
               "stream": True}
    if args.ignore_eos:
        payload["ignore_eos"] = True
    if args.include_usage:
        payload["stream_options"] = {"include_usage": True}
    payload.update(json.loads(args.extra))
    before = await scrape_tokens(args.port) if args.metrics else None
    cpu0 = cpu_snapshot(args.server_pid)
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    records = []

    async def client():
        while time.perf_counter() < deadline:
            records.append(await one_request(args.port, payload, t0, anomalies, args.max_tokens))

    drain_limit = args.duration + args.drain_timeout
    try:
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(c))), drain_limit)
    except asyncio.TimeoutError:
        anomalies.add("drain_timeout", f"C={c}: requests still running {args.drain_timeout}s after the window")
        raise
    t_end = time.perf_counter() - t0
    cpu = cpu_report(cpu0, cpu_snapshot(args.server_pid))
    if args.metrics:
        await asyncio.sleep(0.5)  # the engine thread updates its gauges after the step that ended the last request
    after = await scrape_tokens(args.port) if args.metrics else None

    in_window = sum(n for r in records for t, n in r["events"] if t <= args.duration)
    ttfts = [r["ttft"] for r in records if r["ttft"] is not None]
    texts = {}
    for r in records:
        if r["ok"]:
            texts[r["text"]] = texts.get(r["text"], 0) + 1
    res = {
        "concurrency": c,
        "window_s": args.duration,
        "drained_s": t_end,
        "requests": len(records),
        "completed": sum(r["ok"] for r in records),
        "failed": sum(not r["ok"] for r in records),
        "tokens_in_window": in_window,
        "tokens_total": sum(r["tokens"] for r in records),
        "tok_s": in_window / args.duration,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "ttft_max": max(ttfts) if ttfts else None,
        "max_chunk_gap_s": max((r["max_gap"] for r in records), default=0.0),
        "tokens_per_request": sorted({r["tokens"] for r in records}),
        "finish_reasons": sorted({str(r["finish"]) for r in records}),
        "distinct_texts": len(texts),
        "text_sample": max(texts, key=texts.get)[:200] if texts else "",
        "cpu": cpu,
    }
    if before and after:
        res["server_generation_tokens"] = after.get("vllm:generation_tokens_total", 0) - before.get(
            "vllm:generation_tokens_total", 0)
        res["server_after"] = after
    return res


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="gemma")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--include-usage", action="store_true")
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("--extra", default="{}", help="JSON object merged into every request body")
    ap.add_argument("--server-pid", type=int, default=0, help="for the CPU-use report")
    args = ap.parse_args()

    anomalies = Anomalies()
    # Warm-up: one request, not measured (first-touch of weights, thread pools, allocator).
    payload = {"model": args.model, "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
               "stream": True}
    if args.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(json.loads(args.extra))
    warm = await one_request(args.port, payload, time.perf_counter(), anomalies, args.max_tokens)
    if not warm["ok"]:
        print(f"{args.label}: the warm-up request failed: {anomalies.items}", file=sys.stderr)
        sys.exit(1)
    levels = []
    for c in [int(x) for x in args.concurrency.split(",")]:
        res = await run_level(args, c, anomalies)
        levels.append(res)
        extra = ""
        cpu = res["cpu"]
        if "server_generation_tokens" in res:
            extra = f", server counted {res['server_generation_tokens']:.0f} tokens"
        ms = lambda v: "n/a" if v is None else f"{v * 1000:7.1f} ms"
        print(f"{args.label}: C={c:<3} {res['tok_s']:8.1f} tok/s  TTFT p50 {ms(res['ttft_p50'])} "
              f"p99 {ms(res['ttft_p99'])}  {res['requests']} requests ({res['failed']} failed), "
              f"{res['distinct_texts']} distinct text(s), max chunk gap {res['max_chunk_gap_s'] * 1000:.0f} ms"
              f"{extra}; cores used: server {cpu['server_cores']:.2f}, client {cpu['client_cores']:.2f}, "
              f"other processes {cpu['other_cores']:.2f} of {cpu['cpus']}", file=sys.stderr)
        await asyncio.sleep(1.0)
    out = {"label": args.label, "prompt": PROMPT, "max_tokens": args.max_tokens, "warmup_text": warm["text"],
           "warmup_tokens": warm["tokens"], "warmup_finish": warm["finish"], "levels": levels,
           "anomaly_count": anomalies.count, "anomalies": anomalies.items}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    if any(lv["completed"] == 0 for lv in levels):
        print(f"{args.label}: a concurrency level completed no request", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
