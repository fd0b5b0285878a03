#!/usr/bin/env python3
"""Fakes of the Google Cloud endpoints builder calls, for the tests, on one loopback port:
the metadata server, the OAuth token endpoint (which verifies our JWT's RS256 signature with the
key's public half, through the openssl command), Secret Manager and the Cloud Run Admin API v2 with
long-running operations and IAM policies, IAM Credentials generateIdToken, and the deployed service's
own /health (at /__service/NAME, which checks the identity token unless the service is public).
Honest by construction: every Service body is parsed with Google's own published types
(google-cloud-run's run_v2.Service, unknown fields rejected), every setIamPolicy body with
google.iam.v1's SetIamPolicyRequest, and a body that does not parse gets the 400 Google would send.

Control: POST /__scenario {"mode": ok|revision_fails|quota|permission|never_done|domain_restricted,
"polls": N, "metadata_identity": bool, "service_uri_here": bool, "policy_races": N};
GET /__requests lists what was received (paths, methods, which credential), never secrets."""
import argparse, base64, json, subprocess, sys, tempfile, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2
from google.protobuf import json_format

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--sa-public-key", help="PEM public key of the test service account")
parser.add_argument("--sa-email", default="builder@test-project.iam.gserviceaccount.com")
parser.add_argument("--client-id", default="client-id")
parser.add_argument("--client-secret", default="client-secret")
parser.add_argument("--refresh-token", default="refresh-token")
parser.add_argument("--secret", action="append", default=[], help="NAME=VALUE, served for any project")
parser.add_argument("--corrupt-crc", action="store_true")
args = parser.parse_args()

TOKENS = {"ya29.metadata": "metadata", "ya29.service-account": "service_account", "ya29.user": "user", "ya29.env": "env"}
secrets = dict(s.split("=", 1) for s in args.secret)
lock = threading.Lock()
state = {"mode": "ok", "polls": 1, "requests": [], "operations": {}, "services": {}, "policies": {},
         "metadata_identity": True, "service_uri_here": False, "policy_races": 0}
METADATA_ACCOUNT = "build-sa@test-project.iam.gserviceaccount.com"

def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF

def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def verify_jwt(assertion: str, audience: str):
    head, payload, sig = assertion.split(".")
    with tempfile.NamedTemporaryFile() as data, tempfile.NamedTemporaryFile() as signature:
        data.write(f"{head}.{payload}".encode()); data.flush()
        signature.write(b64url_decode(sig)); signature.flush()
        ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", args.sa_public_key, "-signature", signature.name, data.name],
                            capture_output=True).returncode == 0
    if not ok:
        return None, "invalid_grant: Invalid JWT Signature."
    header = json.loads(b64url_decode(head)); claims = json.loads(b64url_decode(payload))
    if header.get("alg") != "RS256":
        return None, "invalid_grant: alg must be RS256"
    if claims.get("iss") != args.sa_email or claims.get("aud") != audience:
        return None, f"invalid_grant: iss/aud mismatch ({claims.get('iss')}, {claims.get('aud')})"
    if not (claims.get("iat", 0) - 60 <= time.time() < claims.get("exp", 0)):
        return None, "invalid_grant: Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
    return claims, None

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, status, obj, content_type="application/json"):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def google_error(self, status, code, message):
        self.send_json(status, {"error": {"code": status, "message": message, "status": code}})

    def record(self, body=None):
        auth = self.headers.get("Authorization", "")
        who = TOKENS.get(auth[7:], "unknown" if auth else "none") if auth.startswith("Bearer ") else "none"
        entry = {"method": self.command, "path": self.path.split("?")[0], "query": urlsplit(self.path).query, "credential": who}
        if body is not None and self.path.startswith("/v2/"):
            entry["body"] = body
        with lock:
            state["requests"].append(entry)
        return who

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self): self.route()
    def do_POST(self): self.route()
    def do_PATCH(self): self.route()

    def route(self):
        url = urlsplit(self.path)
        raw = self.body()
        path = url.path
        if path == "/__requests":
            with lock:
                return self.send_json(200, state["requests"])
        if path == "/__scenario":
            with lock:
                state.update(json.loads(raw))
            return self.send_json(200, {})
        who = self.record(raw.decode(errors="replace") if raw else None)
        if path.startswith("/computeMetadata/v1/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.send_json(403, b"Missing Metadata-Flavor header", "text/plain")
            if path.endswith("/service-accounts/default/token"):
                return self.send_json(200, {"access_token": "ya29.metadata", "expires_in": 3599, "token_type": "Bearer"})
            if path.endswith("/service-accounts/default/email"):
                return self.send_json(200, METADATA_ACCOUNT.encode(), "text/plain")
            if path.endswith("/service-accounts/default/identity"):
                with lock:
                    if not state["metadata_identity"]:
                        return self.send_json(404, b"not found", "text/plain")
                aud = parse_qs(url.query).get("audience", [""])[0]
                return self.send_json(200, f"id-token-for:{aud}".encode(), "text/plain")
            if path.endswith("/project/project-id"):
                return self.send_json(200, b"test-project", "text/plain")
            return self.send_json(404, b"not found", "text/plain")
        if path == "/token" and self.command == "POST":
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                claims, error = verify_jwt(form.get("assertion", ""), f"http://127.0.0.1:{args.port}/token")
                if error:
                    code, _, desc = error.partition(": ")
                    return self.send_json(400, {"error": code, "error_description": desc})
                if "target_audience" in claims:
                    return self.send_json(200, {"id_token": "id-token-for:" + claims["target_audience"]})
                return self.send_json(200, {"access_token": "ya29.service-account", "expires_in": 3599, "token_type": "Bearer"})
            if form.get("grant_type") == "refresh_token":
                if (form.get("client_id"), form.get("client_secret"), form.get("refresh_token")) != (args.client_id, args.client_secret, args.refresh_token):
                    return self.send_json(400, {"error": "invalid_grant", "error_description": "Bad Request"})
                return self.send_json(200, {"access_token": "ya29.user", "expires_in": 3599, "token_type": "Bearer"})
            return self.send_json(400, {"error": "unsupported_grant_type"})
        if path.startswith("/__service/"):
            return self.deployed_service(path.split("/")[2])
        if who in ("none", "unknown"):
            return self.google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if path.startswith("/v1/projects/-/serviceAccounts/") and path.endswith(":generateIdToken") and self.command == "POST":
            account = path[len("/v1/projects/-/serviceAccounts/"):-len(":generateIdToken")]
            try:
                request = json.loads(raw)
            except ValueError:
                return self.google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            unknown = set(request) - {"delegates", "audience", "includeEmail"}
            if unknown or not request.get("audience"):
                return self.google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name {sorted(unknown)} or no audience.")
            if account.startswith("denied@"):
                return self.google_error(403, "PERMISSION_DENIED", f"Permission 'iam.serviceAccounts.getOpenIdToken' denied on resource (or it may not exist).")
            return self.send_json(200, {"token": "id-token-for:" + request["audience"]})
        if path.startswith("/v1/projects/") and path.endswith(":access"):
            name = path[len("/v1/"):-len(":access")]
            secret = name.split("/")[3]
            if secret == "forbidden":
                return self.google_error(403, "PERMISSION_DENIED", f"Permission 'secretmanager.versions.access' denied for resource '{name}'")
            if secret not in secrets:
                return self.google_error(404, "NOT_FOUND", f"Secret [{name}] not found or has no versions.")
            data = secrets[secret].encode()
            crc = crc32c(data) ^ (1 if args.corrupt_crc else 0)
            return self.send_json(200, {"name": name, "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc)}})
        if path.startswith("/v2/projects/"):
            return self.cloud_run(path[len("/v2/"):], parse_qs(url.query), raw)
        self.send_json(404, {"error": {"code": 404, "message": "no such fake route " + path, "status": "NOT_FOUND"}})

    def deployed_service(self, service_id):
        with lock:
            service = next((v for k, v in state["services"].items() if k.endswith("/services/" + service_id)), None)
            policy = next((v for k, v in state["policies"].items() if k.endswith("/services/" + service_id)), {})
        if service is None:
            return self.send_json(404, b"no such service", "text/plain")
        public = service.get("invokerIamDisabled") or any(
            b.get("role") == "roles/run.invoker" and "allUsers" in b.get("members", []) for b in policy.get("bindings", []))
        audience = f"http://127.0.0.1:{args.port}/__service/{service_id}"
        if not public and self.headers.get("Authorization") != "Bearer id-token-for:" + audience:
            return self.send_json(403, b"Your client does not have permission to get URL /health from this server.", "text/html")
        return self.send_json(200, b"", "text/plain")

    def iam_policy(self, service, verb, raw):
        with lock:
            mode = state["mode"]
            current = state["policies"].get(service, {"version": 1, "etag": base64.b64encode(b"etag-0").decode()})
        if verb == "getIamPolicy" and self.command == "GET":
            return self.send_json(200, current)
        if verb != "setIamPolicy" or self.command != "POST":
            return self.google_error(404, "NOT_FOUND", "no such IAM route")
        try:
            request = json_format.Parse(raw.decode(), iam_policy_pb2.SetIamPolicyRequest(), ignore_unknown_fields=False)
        except Exception as e:
            return self.google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {e}")
        if mode == "domain_restricted" and any("allUsers" in b.members for b in request.policy.bindings):
            return self.google_error(400, "FAILED_PRECONDITION", "One or more users named in the policy do not belong to a permitted customer.")
        with lock:
            if state["policy_races"] > 0:
                # Someone else changed the policy between our client's read and write.
                state["policy_races"] -= 1
                other = dict(current, etag=base64.b64encode(uuid.uuid4().bytes).decode(),
                             bindings=current.get("bindings", []) + [{"role": "roles/run.developer", "members": ["user:other@example.com"]}])
                state["policies"][service] = other
                current = other
            if request.policy.etag and request.policy.etag != base64.b64decode(current["etag"]):
                return self.google_error(409, "ABORTED", "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.")
            stored = json.loads(json_format.MessageToJson(request.policy))
            stored["etag"] = base64.b64encode(uuid.uuid4().bytes).decode()
            state["policies"][service] = stored
        return self.send_json(200, stored)

    def cloud_run(self, name, query, raw):
        parts = name.split("/")
        with lock:
            mode, polls = state["mode"], state["polls"]
        if len(parts) == 6 and parts[4] == "services" and ":" in parts[5]:
            service_id, verb = parts[5].split(":", 1)
            return self.iam_policy("/".join(parts[:5] + [service_id]), verb, raw)
        if self.command == "PATCH" and len(parts) == 6 and parts[4] == "services":
            try:
                service = run_v2.Service.from_json(raw.decode(), ignore_unknown_fields=False)
            except Exception as e:
                return self.google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {e}")
            if query.get("allowMissing") != ["true"]:
                return self.google_error(404, "NOT_FOUND", "allowMissing must be set for an upsert")
            if mode == "permission":
                return self.google_error(403, "PERMISSION_DENIED", "Permission 'run.services.update' denied on resource")
            defaulted = json.loads(run_v2.Service.to_json(service))
            defaulted["name"] = name
            if query.get("validateOnly") == ["true"]:
                return self.send_json(200, {"name": name.rsplit("/", 2)[0] + "/operations/validate", "done": True,
                                            "response": dict(defaulted, **{"@type": "type.googleapis.com/google.cloud.run.v2.Service"})})
            op = "/".join(parts[:4]) + "/operations/" + uuid.uuid4().hex
            with lock:
                state["operations"][op] = {"polls": 0, "service": name}
                state["services"][name] = defaulted
            return self.send_json(200, {"name": op, "done": False, "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", "name": name}})
        if self.command == "GET" and len(parts) == 6 and parts[4] == "operations":
            with lock:
                op = state["operations"].get(name)
                if op is None:
                    return self.google_error(404, "NOT_FOUND", "operation not found")
                op["polls"] += 1
                done = mode != "never_done" and op["polls"] >= polls
                service_name = op["service"]
            if not done:
                return self.send_json(200, {"name": name, "done": False})
            if mode == "quota":
                return self.send_json(200, {"name": name, "done": True, "error": {"code": 8, "message": "Quota exceeded for total allowable count of GPUs per project per region (nvidia_l4_gpu_allocation_no_zonal_redundancy)."}})
            if mode == "revision_fails":
                return self.send_json(200, {"name": name, "done": True, "error": {"code": 9, "message": "Revision 'svc-00001-abc' is not ready and cannot serve traffic. The user-provided container failed the configured startup probe checks."}})
            return self.send_json(200, {"name": name, "done": True, "response": {"name": service_name}})
        if self.command == "GET" and len(parts) == 6 and parts[4] == "services":
            with lock:
                service = state["services"].get(name)
            if service is None:
                return self.google_error(404, "NOT_FOUND", f"Resource '{parts[5]}' of kind 'SERVICE' does not exist.")
            revision = name + "/revisions/" + parts[5] + "-00001-abc"
            ok = mode in ("ok", "domain_restricted")
            with lock:
                here = state["service_uri_here"]
            uri = f"http://127.0.0.1:{args.port}/__service/{parts[5]}" if here else f"https://{parts[5]}-xyz-uc.a.run.app"
            service = dict(service, uri=uri, latestCreatedRevision=revision,
                           latestReadyRevision=revision if ok else "", reconciling=False,
                           terminalCondition={"type": "Ready", "state": "CONDITION_SUCCEEDED" if ok else "CONDITION_FAILED",
                                              "message": "" if ok else "Revision failed: the container failed the startup probe on /health."})
            return self.send_json(200, service)
        if self.command == "GET" and len(parts) == 8 and parts[6] == "revisions":
            return self.send_json(200, {"name": name, "logUri": "https://console.cloud.google.com/logs/viewer?revision=" + parts[7],
                                        "conditions": [{"type": "Ready", "state": "CONDITION_FAILED",
                                                        "message": "Container called exit(3)."}]})
        self.google_error(404, "NOT_FOUND", "no such fake Cloud Run route")

ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print("ready", flush=True)
server.serve_forever()
