#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for the registry tests. It forwards to UPSTREAM and, on a share of
the requests (seeded, so a failure can be replayed), answers 500, 503 or 429 itself, drops the
connection without an answer, or cuts a response body in half. GET /__stats returns what it saw;
POST /__faults?rate=R changes the share of faulty answers."""
import argparse, http.client, json, random, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--upstream", required=True, help="host:port of the registry")
parser.add_argument("--rate", type=float, default=0.0)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()

lock = threading.Lock()
rng = random.Random(args.seed)
state = {"rate": args.rate}
stats = {"requests": 0, "faults": {}, "by_kind": {}}

def kind(method, path):
    if "/blobs/uploads" in path:
        return method + " upload"
    if "/blobs/" in path:
        return method + " blob"
    if "/manifests/" in path:
        return method + " manifest"
    return method + " other"

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def control(self):
        url = urlparse(self.path)
        if url.path == "/__stats":
            with lock:
                body = json.dumps(stats).encode()
        else:
            with lock:
                state["rate"] = float(parse_qs(url.query)["rate"][0])
            body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        if self.path.startswith("/__"):
            return self.control()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with lock:
            stats["requests"] += 1
            k = kind(self.command, self.path)
            stats["by_kind"][k] = stats["by_kind"].get(k, 0) + 1
            fault = None
            if self.path != "/v2/" and rng.random() < state["rate"]:
                fault = rng.choice(["500", "503", "429", "drop", "cut"])
                stats["faults"][fault] = stats["faults"].get(fault, 0) + 1
        if fault in ("500", "503", "429"):
            msg = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has no body, or the next answer is garbled
                self.wfile.write(msg)
            return
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        upstream = http.client.HTTPConnection(args.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        upstream.request(self.command, self.path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault == "cut" and self.command == "GET" and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print("ready", flush=True)
server.serve_forever()
