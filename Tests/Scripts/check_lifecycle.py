#!/usr/bin/env python3
"""A server's life around its requests: clients that leave, and SIGTERM while streams run.

Starts its own `inference-server serve` (it ends it), then checks:
1. A client that disconnects stops its generation at once: a long non-streaming request and a long
   stream are abandoned mid-way, and /metrics shows no running request a moment later.
2. SIGTERM during streaming: new requests get 503 with the OpenAI error body (and /health 503) while the server
   drains; streams that outlive the grace period end with an error event and `data: [DONE]`; the
   process exits with status 0 soon after the grace period.
3. Admission: with --max-num-seqs 1 --max-waiting 1, four requests at once give two answers and two
   429s with Retry-After; a request of three sequences is a 400 (it can never fit), not a 429.

Usage: check_lifecycle.py --binary PATH --model DIR [--grace SECONDS]
"""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, model, port, grace, extra=()):
    log = open(f"/tmp/inference-server-lifecycle-{port}.log", "w+")
    process = subprocess.Popen(
        [binary, "serve", "--model", model, "--port", str(port), "--host", "127.0.0.1",
         "--served-model-name", "gemma", "--shutdown-grace", str(grace), *extra],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited early ({process.returncode}): {log.read()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return process, log
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become healthy in 60 s")


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def long_request(port, stream):
    body = json.dumps({"model": "gemma", "prompt": "Tell me a long story.", "max_tokens": 4000,
                       "temperature": 0, "ignore_eos": True, "stream": stream})
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return s


def read_until(s, marker, seconds=30):
    """Reads from the socket until `marker` has arrived (what was read: true) or the connection
    ends or the time is up (b"": false)."""
    s.settimeout(seconds)
    data = b""
    try:
        while marker not in data:
            chunk = s.recv(4096)
            if not chunk:
                return b""
            data += chunk
    except socket.timeout:
        return b""
    return data


def wait_for_running(port, want, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if metric(port, "vllm:num_requests_running") == want:
            return True
        time.sleep(0.1)
    return False


def admission(args):
    """3. With one place in the batch and one waiting place, four requests at once: two admitted
    (one runs, one waits), two refused with 429 and Retry-After, however the engine interleaves."""
    port = free_port()
    process, log = start(args.binary, args.model, port, args.grace, ["--max-num-seqs", "1", "--max-waiting", "1"])
    try:
        sockets = [long_request(port, True) for _ in range(4)]
        statuses = []
        for s in sockets:
            head = read_until(s, b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            statuses.append((line.split(" ")[1] if line.count(" ") >= 1 else "none", b"retry-after:" in head.lower()))
        codes = sorted(code for code, _ in statuses)
        check(codes == ["200", "200", "429", "429"], f"four requests at --max-num-seqs 1 --max-waiting 1: {statuses}")
        check(all(retry for code, retry in statuses if code == "429"), f"a 429 without Retry-After: {statuses}")
        for s in sockets:
            s.close()
        check(wait_for_running(port, 0.0, 5), "the abandoned requests kept running")
        # The waiting one is admitted once the running one is cut, and runs until the engine finds
        # its client gone: wait until neither is left (reading both once waiting had drained read
        # that admitted request as still running on a loaded machine).
        deadline = time.time() + 10
        while time.time() < deadline:
            waiting, running = metric(port, "vllm:num_requests_waiting"), metric(port, "vllm:num_requests_running")
            if waiting == 0.0 and running == 0.0:
                break
            time.sleep(0.1)
        check(waiting == 0.0 and running == 0.0, f"abandoned requests left {running} running, {waiting} waiting")
        # A request with more sequences than running plus waiting places can never fit: a 400, not a
        # 429 to retry forever; and it leaves nothing queued, so the next request is served.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2, "n": 3}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        body = json.loads(r.read())
        check(r.status == 400 and body["error"]["param"] == "n", f"n=3 with 2 places in all: {r.status} {body}")
        c.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        check(r.status == 200, f"the request after a refused one: {r.status}")
    finally:
        process.kill()
        process.wait()
        log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--grace", type=float, default=3.0)
    args = parser.parse_args()
    port = free_port()
    process, log = start(args.binary, args.model, port, args.grace)
    try:
        # 1. Departing clients.
        for stream in (False, True):
            s = long_request(port, stream)
            check(wait_for_running(port, 1.0, 10), f"stream={stream}: the request never ran")
            if stream:
                check(read_until(s, b"data: "), "no stream data before the disconnect")
            s.close()
            check(wait_for_running(port, 0.0, 3), f"stream={stream}: generation went on after the client left")
        generated = metric(port, "vllm:generation_tokens_total")
        check(generated is not None and generated < 2000, f"{generated} tokens generated for abandoned requests")

        # 2. SIGTERM while two streams run.
        streams = [long_request(port, True) for _ in range(2)]
        for s in streams:
            check(read_until(s, b"data: "), "a stream sent nothing before SIGTERM")
        sent = time.time()
        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.5)
        # Draining: a new request is refused with 503 and the OpenAI body.
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2}),
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            check(r.status == 503 and body["error"]["code"] == 503, f"during drain: {r.status} {body}")
            # /health agrees, so a load balancer still probing stops sending work.
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            check(r.status == 503, f"/health during drain: {r.status}")
        except OSError as e:
            check(False, f"the listener stopped answering during the grace period: {e}")
        for s in streams:
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    check(False, "a stream did not end after SIGTERM")
                    break
                if not chunk:
                    break
                data += chunk
                if b"data: [DONE]" in data:
                    break
            text = data.decode(errors="replace")
            check("data: [DONE]" in text, "a cut stream did not end with [DONE]")
            check('"error"' in text, "a cut stream did not say why it ended")
            s.close()
        try:
            status = process.wait(timeout=args.grace + 10)
            check(status == 0, f"exit status {status} after SIGTERM")
            check(time.time() - sent < args.grace + 8, f"shutdown took {time.time() - sent:.1f} s")
        except subprocess.TimeoutExpired:
            check(False, "the server did not exit after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    admission(args)
    if failures:
        log.seek(0)
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  -", f)
        print("server log:\n" + log.read())
        return 1
    print("lifecycle checks passed (client disconnects, SIGTERM drain, admission)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
