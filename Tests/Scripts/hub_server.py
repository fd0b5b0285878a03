#!/usr/bin/env python3
"""A local stand-in for the Hugging Face Hub, for the tests of `builder fetch`.

It speaks enough of the Hub protocol that the real `huggingface_hub` client downloads from it with
HF_ENDPOINT=http://127.0.0.1:PORT, and it can inject faults. Two listeners in one process:

  * the Hub API on 127.0.0.1:--port
      GET  /api/models/ORG/NAME[/revision/REV]            model info (id, sha, siblings, gated, private)
      GET  /api/models/ORG/NAME/tree/REV[/PATH]           tree listing (?recursive=true|1, paginated, Link rel="next")
      GET  /api/models/ORG/NAME/refs                      branches and tags
      GET  /api/models/ORG/NAME/auth-check                200, or the gated/auth errors
      HEAD/GET /ORG/NAME/resolve/REV/PATH                 plain files: 200/206 with body; LFS files: 302 to the CDN
      GET  /__stats, POST /__faults, POST /__reset_stats  control endpoints
  * a "CDN" on 127.0.0.1:--cdn-port (another origin, standing in for signed CDN URLs)
      HEAD/GET /lfs/SHA256?expires=..&signature=..&file=ORG/NAME/PATH

Repositories are folders DIR/ORG/NAME/ (files in subfolders too, symlinks followed; `.git/` and a top-level
`.hub.json` are not part of the repo). Each repo has exactly one commit, a sha1 over its sorted (path, etag)
list; `main`, the commit itself and the keys of `.hub.json`'s {"revisions": {...}} resolve to it.
A file is LFS when its size >= --lfs-threshold or its name ends in .safetensors/.gguf/.bin/.pt; its etag is
the sha256 of its content and its git oid the sha1 of its LFS pointer text. Other files are git blobs:
etag = oid = sha1("blob <len>\\0" + content). Hashes are computed in a streaming way at startup (before
`ready` is printed) and cached by (path, size, mtime, inode); files added later are hashed on first use.

Access: with --token, a request carrying any other bearer token than --token/--token-no-access gets
401 "Invalid credentials in Authorization header". Unknown repos give 401 RepoNotFound without a token and
404 with one. Repos named with --gated refuse /resolve/ and /auth-check (401 GatedRepo without a token,
403 GatedRepo with --token-no-access, served with --token) while their metadata (info, tree, refs) stays
readable, as on the real Hub (there `gated` is "manual"). Without --token, non-gated repos are public and
every token is accepted; a gated repo is then readable by any token but --token-no-access.

Faults (POST /__faults with a JSON object; it replaces the whole fault configuration):
  "cut_after": {"PATH": BYTES}      next GET of that file (Hub or CDN) whose body is longer than BYTES sends
                                    BYTES body bytes (headers announce the full length), then closes; once
  "flip_byte": {"PATH": COUNT}      next COUNT GETs of that file whose body contains offset size//2 have that
                                    byte XORed with 0xFF (length unchanged)
  "status_rate": {"429": p, ...}    share p of requests (not /__*) answer that status instead ("seed", default 1)
  "status_kinds": ["cdn_get", ...]  only requests of these kinds may get a status fault (default: all kinds)
  "status_count": N                 at most N status faults in all, then serve normally (default: unlimited)
  "slow_bytes_per_second": N        throttle every body to about N bytes/s
PATH is the path in the repo ("model.safetensors") or "ORG/NAME/PATH".
GET /__stats -> {"requests": {kind: n}, "bytes_served": {"ORG/NAME/PATH": n}, "cdn_auth_leaks": n,
"faults_injected": {"429"|"500"|...|"cut_after"|"flip_byte": n}}. Request kinds: info, revision, tree, refs,
auth_check, head, get (Hub /resolve/), cdn_get, cdn_head, other. bytes_served counts body bytes written.
"""
import argparse
import hashlib
import json
import os
import random
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")
CHUNK = 1 << 20

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--cdn-port", type=int, required=True)
parser.add_argument("--repos", required=True)
parser.add_argument("--token")
parser.add_argument("--token-no-access")
parser.add_argument("--gated", action="append", default=[])
parser.add_argument("--page-size", type=int, default=1000)
parser.add_argument("--lfs-threshold", type=int, default=1_000_000)
args = parser.parse_args()
if args.page_size < 1:
    parser.error("--page-size must be >= 1")
REPOS_DIR = os.path.abspath(args.repos)
GATED = set(args.gated)


# ----------------------------------------------------------------------------------------------------------
# Repositories and hashes

class FileInfo:
    __slots__ = ("path", "abspath", "size", "lfs", "sha256", "oid", "etag", "pointer_size", "mtime_ns", "ino")


_hash_cache = {}          # abspath -> (size, mtime_ns, ino, is_lfs, digest)
_hash_cache_lock = threading.Lock()
_hash_locks = {}          # abspath -> Lock, so that a big file is hashed once even under concurrent requests


def is_lfs(path, size):
    return size >= args.lfs_threshold or path.endswith(LFS_SUFFIXES)


def lfs_pointer(sha256, size):
    return b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (sha256.encode(), size)


def git_blob_sha1_header(size):
    return b"blob %d\0" % size


def file_digest(abspath, st, lfs):
    """sha256 of the content for LFS files, git blob sha1 otherwise; streamed and cached."""
    key = (st.st_size, st.st_mtime_ns, st.st_ino, lfs)
    with _hash_cache_lock:
        hit = _hash_cache.get(abspath)
        if hit is not None and hit[:4] == key:
            return hit[4]
        lock = _hash_locks.setdefault(abspath, threading.Lock())
    with lock:
        with _hash_cache_lock:
            hit = _hash_cache.get(abspath)
            if hit is not None and hit[:4] == key:
                return hit[4]
        if lfs:
            h = hashlib.sha256()
        else:
            h = hashlib.sha1()
            h.update(git_blob_sha1_header(st.st_size))
        with open(abspath, "rb") as f:
            while True:
                block = f.read(CHUNK)
                if not block:
                    break
                h.update(block)
        digest = h.hexdigest()
        with _hash_cache_lock:
            _hash_cache[abspath] = key + (digest,)
        return digest


class Repo:
    def __init__(self, repo_id, root):
        self.id = repo_id
        self.root = root
        self.files = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            rel_dir = os.path.relpath(dirpath, root)
            for name in filenames:
                rel = name if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/" + name
                if rel == ".hub.json":
                    continue
                abspath = os.path.join(dirpath, name)
                try:
                    st = os.stat(abspath)  # follows symlinks
                except OSError:
                    continue
                if not os.path.isfile(abspath):
                    continue
                fi = FileInfo()
                fi.path, fi.abspath, fi.size = rel, abspath, st.st_size
                fi.mtime_ns, fi.ino = st.st_mtime_ns, st.st_ino
                fi.lfs = is_lfs(rel, st.st_size)
                digest = file_digest(abspath, st, fi.lfs)
                if fi.lfs:
                    fi.sha256 = digest
                    pointer = lfs_pointer(digest, st.st_size)
                    fi.pointer_size = len(pointer)
                    fi.oid = hashlib.sha1(git_blob_sha1_header(len(pointer)) + pointer).hexdigest()
                    fi.etag = digest
                else:
                    fi.sha256 = None
                    fi.pointer_size = None
                    fi.oid = fi.etag = digest
                self.files[rel] = fi
        listing = "".join("%s\0%s\n" % (p, self.files[p].etag) for p in sorted(self.files))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()
        self.revisions = {"main", self.commit}
        self.tags = []
        meta = os.path.join(root, ".hub.json")
        if os.path.isfile(meta):
            try:
                with open(meta) as f:
                    revs = json.load(f).get("revisions", {})
                names = list(revs) if isinstance(revs, (dict, list)) else []
                self.tags = [n for n in names if isinstance(n, str)]
                self.revisions.update(self.tags)
            except (OSError, ValueError, AttributeError) as e:
                print(f"hub_server: ignoring {meta}: {e}", file=sys.stderr)
        # directories, with a deterministic fake tree oid
        self.dirs = set()
        for p in self.files:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                self.dirs.add("/".join(parts[:i]))
        self.gated = repo_id in GATED

    def dir_oid(self, d):
        return hashlib.sha1(("tree\0%s\0%s" % (self.commit, d)).encode()).hexdigest()

    def tree_entries(self, prefix, recursive):
        """Entries under `prefix` ("" for the root), sorted by path."""
        base = prefix + "/" if prefix else ""
        entries = []
        for d in self.dirs:
            if d.startswith(base) and (recursive or "/" not in d[len(base):]):
                entries.append({"type": "directory", "oid": self.dir_oid(d), "path": d})
        for p, fi in self.files.items():
            if p.startswith(base) and (recursive or "/" not in p[len(base):]):
                e = {"type": "file", "oid": fi.oid, "size": fi.size, "path": p}
                if fi.lfs:
                    e["lfs"] = {"oid": fi.sha256, "size": fi.size, "pointerSize": fi.pointer_size}
                entries.append(e)
        entries.sort(key=lambda e: e["path"])
        return entries


_repo_cache = {}
_repo_cache_lock = threading.Lock()


def _signature(root):
    sig = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            sig.append((dirpath, name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sig)


def get_repo(org, name):
    if not org or not name or org.startswith(".") or name.startswith(".") or "/" in org or "/" in name:
        return None
    root = os.path.join(REPOS_DIR, org, name)
    if not os.path.isdir(root):
        return None
    sig = _signature(root)
    with _repo_cache_lock:
        hit = _repo_cache.get(root)
        if hit is not None and hit[0] == sig:
            return hit[1]
    repo = Repo(f"{org}/{name}", root)
    with _repo_cache_lock:
        _repo_cache[root] = (sig, repo)
    return repo


def all_repos():
    out = []
    if not os.path.isdir(REPOS_DIR):
        return out
    for org in sorted(os.listdir(REPOS_DIR)):
        if os.path.isdir(os.path.join(REPOS_DIR, org)):
            for name in sorted(os.listdir(os.path.join(REPOS_DIR, org))):
                r = get_repo(org, name)
                if r is not None:
                    out.append(r)
    return out


# lfs sha256 -> "org/name/path" of some file with that content (fallback for CDN URLs without `file=`)
def find_by_sha256(sha):
    for repo in all_repos():
        for fi in repo.files.values():
            if fi.lfs and fi.sha256 == sha:
                return repo, fi
    return None, None


# ----------------------------------------------------------------------------------------------------------
# Stats and faults

state_lock = threading.Lock()
stats = {}
faults = {}
rng = random.Random(1)


def reset_stats():
    with state_lock:
        stats.clear()
        stats.update({"requests": {}, "bytes_served": {}, "cdn_auth_leaks": 0, "faults_injected": {}})


def set_faults(cfg):
    global rng
    with state_lock:
        faults.clear()
        faults.update(cfg)
        faults["cut_after"] = dict(cfg.get("cut_after") or {})
        faults["flip_byte"] = {k: int(v) for k, v in (cfg.get("flip_byte") or {}).items()}
        faults["status_rate"] = {str(k): float(v) for k, v in (cfg.get("status_rate") or {}).items()}
        rng = random.Random(cfg.get("seed", 1))


reset_stats()
set_faults({})


def count(kind):
    with state_lock:
        stats["requests"][kind] = stats["requests"].get(kind, 0) + 1


def count_fault(kind):
    with state_lock:
        stats["faults_injected"][kind] = stats["faults_injected"].get(kind, 0) + 1


def add_bytes(key, n):
    with state_lock:
        stats["bytes_served"][key] = stats["bytes_served"].get(key, 0) + n


def _fault_key(table, full_path, repo_path):
    for k in (full_path, repo_path):
        if k in table:
            return k
    return None


def take_cut(full_path, repo_path, body_len):
    """The cut for this response, consumed only when it really cuts (BYTES < body length)."""
    with state_lock:
        k = _fault_key(faults["cut_after"], full_path, repo_path)
        if k is None or int(faults["cut_after"][k]) >= body_len:
            return None
        return int(faults["cut_after"].pop(k))


def take_flip(full_path, repo_path, covers_middle):
    """Whether to flip the middle byte in this response; consumed only when the body contains it."""
    with state_lock:
        k = _fault_key(faults["flip_byte"], full_path, repo_path)
        if not covers_middle:
            return False
        if k is None or faults["flip_byte"][k] <= 0:
            return False
        faults["flip_byte"][k] -= 1
        if faults["flip_byte"][k] <= 0:
            del faults["flip_byte"][k]
        return True


def draw_status(kind):
    with state_lock:
        rates = faults["status_rate"]
        if not rates:
            return None
        kinds = faults.get("status_kinds")
        if kinds is not None and kind not in kinds:
            return None
        left = faults.get("status_count")
        if left is not None and int(left) <= 0:
            return None
        r = rng.random()
        acc = 0.0
        for code in sorted(rates):
            acc += rates[code]
            if r < acc:
                if left is not None:
                    faults["status_count"] = int(left) - 1
                return int(code)
        return None


def slow_rate():
    with state_lock:
        v = faults.get("slow_bytes_per_second")
    return float(v) if v else None


# ----------------------------------------------------------------------------------------------------------
# HTTP

class HTTPError(Exception):
    def __init__(self, status, code=None, message=None, headers=()):
        self.status, self.code, self.message, self.headers = status, code, message, list(headers)


def parse_range(header, size):
    """Returns None (serve all), (start, end) inclusive, or "unsatisfiable"."""
    if not header:
        return None
    header = header.strip()
    if not header.startswith("bytes=") or "," in header:
        return None  # unsupported units or multi-range: ignore the header (allowed by RFC 9110)
    spec = header[6:].strip()
    a, sep, b = spec.partition("-")
    if not sep:
        return None
    try:
        if a == "":
            n = int(b)
            if n <= 0:
                return "unsatisfiable"
            return (max(size - n, 0), size - 1) if size > 0 else "unsatisfiable"
        start = int(a)
        end = int(b) if b != "" else size - 1
    except ValueError:
        return None
    if start < 0 or (b != "" and end < start):
        return None  # syntactically invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size - 1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hub_server"

    def version_string(self):
        return self.server_version
    is_cdn = False

    def log_message(self, *a):
        pass

    # ---- helpers

    def token(self):
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer":
            return ""
        return value.strip()

    def send_json(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_response(self, err):
        headers = list(err.headers)
        if err.code:
            headers.append(("X-Error-Code", err.code))
        if err.message:
            headers.append(("X-Error-Message", err.message))
        self.send_json(err.status, {"error": err.message or str(err.status)}, headers)

    def maybe_status_fault(self, kind):
        status = draw_status(kind)
        if status is None:
            return False
        count_fault(str(status))
        if status == 429:
            resource = "api" if self.path.startswith("/api/") else "resolvers"
            headers = [("Retry-After", "1"), ("RateLimit", f'"{resource}";r=0;t=1'),
                       ("RateLimit-Policy", f'"fixed window";"{resource}";q=3000;w=300')]
            msg = "You have been rate-limited; you can retry this action in about 1 second."
        else:
            headers, msg = [], f"Injected fault {status}"
        self.send_json(status, {"error": msg}, headers)
        return True

    def write_body(self, path, start, end, stats_key, flip_at=None, cut=None):
        """Sends file bytes [start, end] (inclusive); honours cut/flip/throttle. Returns bytes sent."""
        remaining = end - start + 1
        limit = remaining if cut is None else min(cut, remaining)
        rate = slow_rate()
        chunk = CHUNK if rate is None else max(1, min(CHUNK, int(rate / 20) or 1))
        sent = 0
        try:
            with open(path, "rb") as f:
                f.seek(start)
                pos = start
                while sent < limit:
                    data = f.read(min(chunk, limit - sent))
                    if not data:
                        break
                    if flip_at is not None and pos <= flip_at < pos + len(data):
                        b = bytearray(data)
                        b[flip_at - pos] ^= 0xFF
                        data = bytes(b)
                    self.wfile.write(data)
                    sent += len(data)
                    pos += len(data)
                    if rate is not None:
                        time.sleep(len(data) / rate)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            if sent:
                add_bytes(stats_key, sent)
        if cut is not None:
            count_fault("cut_after")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return sent

    def serve_content(self, fi, stats_key, etag, extra_headers):
        """200/206/416 for a file's content (HEAD or GET)."""
        size = fi.size
        rng_ = parse_range(self.headers.get("Range"), size)
        if rng_ == "unsatisfiable":
            self.send_json(416, {"error": "Requested Range Not Satisfiable"},
                           [("Content-Range", f"bytes */{size}")] + list(extra_headers))
            return
        if rng_ is None:
            status, start, end = 200, 0, size - 1
        else:
            status, (start, end) = 206, rng_
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1 if size else 0))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD" or size == 0:
            return
        repo_path = fi.path
        cut = take_cut(stats_key, repo_path, end - start + 1)
        last = end if cut is None else start + cut - 1  # the last byte that will actually be sent
        flip_at = size // 2 if take_flip(stats_key, repo_path, start <= size // 2 <= last) else None
        if flip_at is not None:
            count_fault("flip_byte")
        self.write_body(fi.abspath, start, end, stats_key, flip_at=flip_at, cut=cut)

    # ---- dispatch

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def handle_any(self):
        try:
            if self.is_cdn:
                self.route_cdn()
            else:
                self.route_hub()
        except HTTPError as e:
            self.send_error_response(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug in here should not hang the client
            import traceback
            traceback.print_exc()
            try:
                self.send_error_response(HTTPError(500, None, f"hub_server internal error: {e}"))
            except OSError:
                pass
            self.close_connection = True

    # ---- control

    def route_control(self, path):
        if path == "/__stats" and self.command == "GET":
            with state_lock:
                body = json.loads(json.dumps(stats))
            self.send_json(200, body)
        elif path == "/__faults" and self.command == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b"{}"
            try:
                cfg = json.loads(raw or b"{}")
                if not isinstance(cfg, dict):
                    raise ValueError("fault config must be a JSON object")
                set_faults(cfg)
            except (ValueError, TypeError) as e:
                raise HTTPError(400, None, f"bad fault config: {e}")
            self.send_json(200, {"ok": True})
        elif path == "/__reset_stats" and self.command == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            reset_stats()
            self.send_json(200, {"ok": True})
        else:
            raise HTTPError(404, None, "unknown control endpoint")

    # ---- access control

    def check_token(self):
        """401 for a token that is neither --token nor --token-no-access (only when --token is set)."""
        tok = self.token()
        if tok is None:
            return None
        if args.token is not None and tok not in (args.token, args.token_no_access):
            raise HTTPError(401, None, "Invalid credentials in Authorization header")
        return tok

    def find_repo(self, org, name, tok):
        repo = get_repo(org, name)
        if repo is None:
            if tok is None:
                raise HTTPError(401, "RepoNotFound", "Invalid username or password.")
            raise HTTPError(404, "RepoNotFound", "Repository not found")
        return repo

    def check_gate(self, repo, tok):
        if not repo.gated:
            return
        if tok is None or tok == "":
            raise HTTPError(401, "GatedRepo",
                            f"Access to model {repo.id} is restricted. You must have access to it and be "
                            "authenticated to access it. Please log in.")
        if tok == args.token_no_access or (args.token is not None and tok != args.token):
            raise HTTPError(403, "GatedRepo",
                            f"Access to model {repo.id} is restricted and you are not in the authorized list. "
                            f"Visit http://127.0.0.1:{args.port}/{repo.id} to ask for access.")

    def resolve_rev(self, repo, rev):
        if rev not in repo.revisions:
            raise HTTPError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo.commit

    # ---- Hub routes

    def route_hub(self):
        url = urlsplit(self.path)
        raw_path = url.path
        if raw_path.startswith("/__"):
            return self.route_control(raw_path)
        segs = raw_path.split("/")[1:]  # still percent-encoded
        kind = "other"
        if len(segs) >= 3 and segs[0] == "api" and segs[1] == "models":
            rest = segs[4:] if len(segs) > 4 else []
            kind = {"revision": "revision", "tree": "tree", "refs": "refs", "auth-check": "auth_check"}.get(
                rest[0] if rest else "", "info" if not rest else "other")
        elif len(segs) >= 4 and segs[2] == "resolve":
            kind = "head" if self.command == "HEAD" else "get"
        count(kind)
        if self.maybe_status_fault(kind):
            return
        if self.command == "POST":
            self.close_connection = True  # the body was not read
            raise HTTPError(405, None, "Method not allowed")
        if kind == "other":
            raise HTTPError(404, None, "Not found")
        tok = self.check_token()
        if segs[0] == "api":
            org, name = unquote(segs[2]), unquote(segs[3]) if len(segs) > 3 else ""
            repo = self.find_repo(org, name, tok)
            rest = segs[4:]
            if kind == "info":
                return self.api_info(repo, "main")
            if kind == "revision":
                if len(rest) < 2 or rest[1] == "":
                    raise HTTPError(404, None, "Not found")
                return self.api_info(repo, unquote("/".join(rest[1:])))
            if kind == "tree":
                if len(rest) < 2 or rest[1] == "":
                    raise HTTPError(404, None, "Not found")
                rev = unquote(rest[1])
                sub = unquote("/".join(rest[2:])).strip("/")
                return self.api_tree(repo, rev, sub, parse_qs(url.query))
            if kind == "refs":
                return self.send_json(200, {
                    "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commit}],
                    "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": repo.commit} for t in repo.tags],
                    "converts": [], "pullRequests": []})
            if kind == "auth_check":
                self.check_gate(repo, tok)
                return self.send_json(200, {})
        # /ORG/NAME/resolve/REV/PATH
        org, name = unquote(segs[0]), unquote(segs[1])
        repo = self.find_repo(org, name, tok)
        self.check_gate(repo, tok)
        rev = unquote(segs[3])
        commit = self.resolve_rev(repo, rev)
        file_path = unquote("/".join(segs[4:]))
        fi = repo.files.get(file_path)
        if fi is None:
            raise HTTPError(404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", commit)])
        stats_key = f"{repo.id}/{fi.path}"
        if fi.lfs:
            q = urlencode({"expires": str(int(time.time()) + 3600), "signature": secrets.token_hex(16),
                           "file": stats_key})
            location = f"http://127.0.0.1:{args.cdn_port}/lfs/{fi.sha256}?{q}"
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{fi.sha256}"')
            self.send_header("X-Linked-Size", str(fi.size))
            self.send_header("ETag", f'"{fi.oid}"')  # the pointer's git oid: not the blob name to use
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.serve_content(fi, stats_key, fi.etag, [("X-Repo-Commit", commit)])

    def api_info(self, repo, rev):
        commit = self.resolve_rev(repo, rev)
        self.send_json(200, {
            "_id": repo.commit[:24], "id": repo.id, "modelId": repo.id, "author": repo.id.split("/")[0],
            "sha": commit, "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
        })

    def api_tree(self, repo, rev, sub, query):
        self.resolve_rev(repo, rev)
        recursive = (query.get("recursive", ["false"])[-1].lower() in ("1", "true", "yes"))
        if sub and sub not in repo.dirs:
            if sub in repo.files:
                raise HTTPError(400, None, f"{sub} is a file, not a directory")
            raise HTTPError(404, "EntryNotFound", f"{sub} does not exist on \"{rev}\"",
                            [("X-Repo-Commit", repo.commit)])
        entries = repo.tree_entries(sub, recursive)
        try:
            cursor = int(query.get("cursor", ["0"])[-1])
        except ValueError:
            raise HTTPError(400, None, "invalid cursor")
        page = entries[cursor:cursor + args.page_size]
        headers = []
        if cursor + args.page_size < len(entries):
            host = self.headers.get("Host") or f"127.0.0.1:{args.port}"
            q = {k: v[-1] for k, v in query.items() if k != "cursor"}
            q["cursor"] = str(cursor + args.page_size)
            path = urlsplit(self.path).path
            headers.append(("Link", f'<http://{host}{path}?{urlencode(q)}>; rel="next"'))
        self.send_json(200, page, headers)

    # ---- CDN route

    def route_cdn(self):
        url = urlsplit(self.path)
        segs = url.path.split("/")[1:]
        kind = "cdn_head" if self.command == "HEAD" else "cdn_get"
        if self.command == "POST":
            self.close_connection = True
            count("cdn_other")
            raise HTTPError(405, None, "Method not allowed")
        count(kind)
        if self.headers.get("Authorization") is not None:
            with state_lock:
                stats["cdn_auth_leaks"] += 1
        if self.maybe_status_fault(kind):
            return
        if len(segs) != 2 or segs[0] != "lfs":
            raise HTTPError(404, None, "Not found")
        sha = segs[1]
        query = parse_qs(url.query)
        if "signature" not in query or "expires" not in query:
            raise HTTPError(403, None, "Missing signature")
        fi = None
        key = query.get("file", [None])[-1]
        if key:
            org, _, rest = key.partition("/")
            name, _, path = rest.partition("/")
            repo = get_repo(org, name)
            if repo is not None:
                cand = repo.files.get(path)
                if cand is not None and cand.lfs and cand.sha256 == sha:
                    fi = cand
        if fi is None:
            repo, fi = find_by_sha256(sha)
            if fi is None:
                raise HTTPError(404, None, "Not found")
            key = f"{repo.id}/{fi.path}"
        self.serve_content(fi, key, fi.sha256, [])


class CdnHandler(Handler):
    is_cdn = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # clients that hang up (and our own cut_after) are part of the game, not errors worth a traceback
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)


def main():
    # hash everything up front so that the first requests are fast
    for repo in all_repos():
        pass
    hub = Server(("127.0.0.1", args.port), Handler)
    cdn = Server(("127.0.0.1", args.cdn_port), CdnHandler)
    for srv in (hub, cdn):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
