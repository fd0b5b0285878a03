#!/usr/bin/env python3
"""A registry token service for the tests: the distribution spec's token flow, as Docker Hub and
Artifact Registry run it. GET /token?service=S&scope=repository:NAME:ACTIONS with Basic auth
answers a JWT signed (RS256, with the certificate in x5c) that docker-registry's `auth: token`
verifies against its rootcertbundle. Counts what it issues on GET /__stats."""
import argparse, base64, json, os, subprocess, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--key", required=True)
parser.add_argument("--cert", required=True)
parser.add_argument("--issuer", default="test-issuer")
parser.add_argument("--user", default="tester")
parser.add_argument("--password", required=True)
args = parser.parse_args()

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

der = subprocess.run(["openssl", "x509", "-in", args.cert, "-outform", "DER"], check=True, capture_output=True).stdout
stats = {"tokens": 0, "refused": 0}
lock = threading.Lock()

def sign(payload: dict) -> str:
    header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", args.key], input=signing_input.encode(),
                         check=True, capture_output=True).stdout
    return signing_input + "." + b64url(sig)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/__stats":
            with lock:
                return self.reply(200, stats)
        if url.path != "/token":
            return self.reply(404, {"error": "not found"})
        auth = self.headers.get("Authorization", "")
        user = None
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if name != args.user or password != args.password:
                with lock:
                    stats["refused"] += 1
                return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            user = name
        query = parse_qs(url.query)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")[0], ":".join(scope.split(":")[1:-1]), scope.split(":")[-1]
            # Anonymous callers get pull only; the test user gets what it asks for.
            granted = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": args.issuer, "sub": user or "", "aud": query.get("service", [""])[0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
        token = sign(claims)
        with lock:
            stats["tokens"] += 1
        self.reply(200, {"token": token, "access_token": token, "expires_in": 300})

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print("ready", flush=True)
server.serve_forever()
