#!/usr/bin/env python3
"""Proof that hub_server.py speaks the Hub protocol: drives the real `huggingface_hub` client against it.

    pip install huggingface_hub
    python3 Tests/Scripts/check_hub_server.py [--python /path/to/python-with-huggingface_hub]

The client runs in subprocesses (HF_ENDPOINT=the server, HF_HUB_CACHE=a temp dir, HF_HUB_DISABLE_XET=1, no
ambient token). Exits non-zero and lists the failures when anything is off."""
import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "hub_server.py")
TOKEN = "hf_goodtoken"
TOKEN_NO_ACCESS = "hf_noaccesstoken"

ap = argparse.ArgumentParser()
ap.add_argument("--python", default=os.environ.get("HF_CLIENT_PYTHON", sys.executable),
                help="python interpreter with huggingface_hub installed (default: this one, or $HF_CLIENT_PYTHON)")
ap.add_argument("--keep", action="store_true", help="keep the temp dir")
opts = ap.parse_args()

failures = []
passed = []


def check(cond, what):
    if cond:
        passed.append(what)
        print(f"  ok   {what}")
    else:
        failures.append(what)
        print(f"  FAIL {what}")
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# fixtures

tmp = tempfile.mkdtemp(prefix="hubcheck-")
repos = os.path.join(tmp, "repos")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_model(root, seed):
    r = __import__("random").Random(seed)
    write(os.path.join(root, "config.json"), json.dumps({"architectures": ["X"], "seed": seed}, indent=2).encode() + b"\n")
    write(os.path.join(root, "tokenizer.json"), json.dumps({"model": {"vocab": {f"t{i}": i for i in range(2000)}}}).encode())
    write(os.path.join(root, "model.safetensors"), r.randbytes(3_000_000))
    write(os.path.join(root, "sub", "dir", "extra.txt"), b"nested file %d\n" % seed)


make_model(os.path.join(repos, "org", "model"), 1)
make_model(os.path.join(repos, "org", "gated"), 2)
write(os.path.join(repos, "org", "model", ".hub.json"), json.dumps({"revisions": {"v1": "same"}}).encode())
many = os.path.join(repos, "org", "many")
for i in range(5):
    write(os.path.join(many, f"f{i}.txt"), b"file %d\n" % i)
for i in range(3):
    write(os.path.join(many, "a", f"g{i}.json"), b'{"g": %d}' % i)
write(os.path.join(many, "a", "b", "deep.bin"), os.urandom(1000))            # LFS by extension
write(os.path.join(many, "big.dat"), os.urandom(1_200_000))                    # LFS by size (default threshold)
os.symlink(os.path.join(many, "f0.txt"), os.path.join(many, "link.txt"))      # symlinks are followed
write(os.path.join(repos, "org", "big", "weights.gguf"), os.urandom(24_000_000))


def source_files(repo_id):
    root = os.path.join(repos, *repo_id.split("/"))
    out = {}
    for dirpath, _, names in os.walk(root, followlinks=True):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
            if rel != ".hub.json":
                with open(os.path.join(dirpath, n), "rb") as f:
                    out[rel] = f.read()
    return out


# ----------------------------------------------------------------------------------------------------------
# server

HUB_PORT, CDN_PORT = free_port(), free_port()
HUB = f"http://127.0.0.1:{HUB_PORT}"
server = subprocess.Popen(
    [sys.executable, SERVER, "--port", str(HUB_PORT), "--cdn-port", str(CDN_PORT), "--repos", repos,
     "--token", TOKEN, "--token-no-access", TOKEN_NO_ACCESS, "--gated", "org/gated", "--page-size", "2"],
    stdout=subprocess.PIPE, text=True)
line = server.stdout.readline().strip()
if line != "ready":
    print(f"server did not start (got {line!r})")
    sys.exit(2)


def http(method, url, headers=None, body=None):
    """(status, headers, body) without following redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def stats():
    return json.loads(http("GET", HUB + "/__stats")[2])


def reset_stats():
    http("POST", HUB + "/__reset_stats", body=b"")


def faults(cfg):
    st, _, body = http("POST", HUB + "/__faults", {"Content-Type": "application/json"}, json.dumps(cfg).encode())
    assert st == 200, body


# ----------------------------------------------------------------------------------------------------------
# client in a subprocess

CLIENT = r"""
import json, sys, traceback
req = json.loads(sys.argv[1])
out = {}
try:
    import huggingface_hub as h
    if req["op"] == "version":
        out["version"] = h.__version__
    elif req["op"] == "snapshot":
        out["path"] = h.snapshot_download(req["repo"], **req.get("kw", {}))
    elif req["op"] == "file":
        out["path"] = h.hf_hub_download(req["repo"], req["file"], **req.get("kw", {}))
    elif req["op"] == "files":
        out["paths"] = [h.hf_hub_download(req["repo"], f, **req.get("kw", {})) for f in req["files"]]
    elif req["op"] == "tree":
        out["entries"] = [{"path": e.path, "type": type(e).__name__} for e in
                          h.HfApi().list_repo_tree(req["repo"], **req.get("kw", {}))]
    out["ok"] = True
except BaseException as e:
    out["ok"] = False
    out["error"] = type(e).__name__
    out["mro"] = [c.__name__ for c in type(e).__mro__]
    out["message"] = str(e)
    out["status"] = getattr(getattr(e, "response", None), "status_code", None)
print("@@RESULT@@" + json.dumps(out))
"""


def client(req, cache, token=None, offline=False, timeout=300):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update({
        "HF_ENDPOINT": HUB, "HF_HUB_CACHE": cache, "HF_HOME": os.path.join(tmp, "hf_home"),
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "30", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    if token:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([opts.python, "-c", CLIENT, json.dumps(req)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    for l in p.stdout.splitlines():
        if l.startswith("@@RESULT@@"):
            res = json.loads(l[len("@@RESULT@@"):])
            res["stderr"] = p.stderr
            return res
    return {"ok": False, "error": "NoResult", "message": p.stdout[-2000:] + p.stderr[-4000:], "mro": []}


def new_cache(name):
    d = os.path.join(tmp, "cache-" + name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def identical(snapshot, repo_id, what):
    src = source_files(repo_id)
    got = {}
    for dirpath, _, names in os.walk(snapshot):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), snapshot).replace(os.sep, "/")
            with open(os.path.join(dirpath, n), "rb") as f:
                got[rel] = f.read()
    diff = sorted(set(src) ^ set(got)) + sorted(p for p in src if p in got and src[p] != got[p])
    return check(not diff, f"{what}: every file byte-identical to the source" + (f" (differ: {diff})" if diff else ""))


def expect_error(res, cls, what, status=None):
    ok = not res["ok"] and cls in res.get("mro", [])
    if ok and status is not None:
        ok = res.get("status") == status
    detail = "" if ok else f" (got ok={res['ok']} {res.get('error')} status={res.get('status')}: " \
                           f"{(res.get('message') or '')[:300]})"
    return check(ok, what + detail)


def expect_ok(res, what):
    return check(res["ok"], what + ("" if res["ok"] else f" ({res.get('error')}: {res.get('message', '')[:600]})"))


# ----------------------------------------------------------------------------------------------------------

def main():
    v = client({"op": "version"}, new_cache("v"))
    if not v["ok"]:
        print(f"huggingface_hub is not importable with {opts.python}: run `pip install huggingface_hub`\n{v['message']}")
        sys.exit(2)
    print(f"huggingface_hub {v['version']} ({opts.python})")

    commit = json.loads(http("GET", f"{HUB}/api/models/org/model/revision/main")[2])["sha"]

    print("snapshot_download of a public repo (no token)")
    cache = new_cache("main")
    reset_stats()
    r = client({"op": "snapshot", "repo": "org/model"}, cache)
    if expect_ok(r, "snapshot_download('org/model') succeeds"):
        check(r["path"].endswith("/snapshots/" + commit), f"snapshot folder is the commit ({commit})")
        identical(r["path"], "org/model", "org/model")
        repo_dir = os.path.join(cache, "models--org--model")
        src = source_files("org/model")
        lfs_name = hashlib.sha256(src["model.safetensors"]).hexdigest()
        check(os.path.isfile(os.path.join(repo_dir, "blobs", lfs_name)), "LFS blob named by its sha256 (X-Linked-Etag)")
        check(os.path.isfile(os.path.join(repo_dir, "blobs", git_blob_sha1(src["config.json"]))),
              "plain blob named by its git sha1")
        with open(os.path.join(repo_dir, "refs", "main")) as f:
            check(f.read() == commit, "refs/main holds the commit")
        s = stats()
        check(s["requests"].get("cdn_get", 0) >= 1 and s["bytes_served"].get("org/model/model.safetensors") == 3_000_000,
              f"LFS content came from the CDN port (stats {s['requests']})")
        check(s["requests"].get("tree", 0) >= 3, "tree listing was paginated (page size 2)")

        print("hf_hub_download(local_files_only=True) finds every file afterwards, without network")
        reset_stats()
        files = sorted(src)
        r2 = client({"op": "files", "repo": "org/model", "files": files, "kw": {"local_files_only": True}}, cache)
        if expect_ok(r2, "local_files_only finds all files"):
            check(all(open(p, "rb").read() == src[f] for p, f in zip(r2["paths"], files)), "cached files are identical")
        r3 = client({"op": "files", "repo": "org/model", "files": files}, cache, offline=True)
        expect_ok(r3, "HF_HUB_OFFLINE=1 finds all files")
        r4 = client({"op": "snapshot", "repo": "org/model", "kw": {"local_files_only": True}}, cache)
        expect_ok(r4, "snapshot_download(local_files_only=True) succeeds (trees/ cache complete)")
        check(sum(stats()["requests"].values()) == 0, "no request reached the server for cached files")

    print("revisions")
    r = client({"op": "snapshot", "repo": "org/model", "kw": {"revision": "nope"}}, new_cache("rev"))
    expect_error(r, "RevisionNotFoundError", "unknown revision -> RevisionNotFoundError")
    r = client({"op": "file", "repo": "org/model", "file": "config.json", "kw": {"revision": "nope"}}, new_cache("rev2"))
    expect_error(r, "RevisionNotFoundError", "hf_hub_download unknown revision -> RevisionNotFoundError")
    r = client({"op": "snapshot", "repo": "org/model", "kw": {"revision": "v1"}}, new_cache("v1"))
    if expect_ok(r, "tag v1 from .hub.json resolves"):
        check(r["path"].endswith(commit), "v1 is the same commit")
    r = client({"op": "snapshot", "repo": "org/model", "kw": {"revision": commit}}, new_cache("bycommit"))
    expect_ok(r, "revision = commit hash works")

    print("missing repos and files")
    r = client({"op": "snapshot", "repo": "org/missing"}, new_cache("m1"))
    expect_error(r, "RepositoryNotFoundError", "unknown repo without token -> RepositoryNotFoundError (401)")
    r = client({"op": "file", "repo": "org/missing", "file": "x"}, new_cache("m2"), token=TOKEN)
    expect_error(r, "RepositoryNotFoundError", "unknown repo with token -> RepositoryNotFoundError (404)", status=404)
    c = new_cache("m3")
    r = client({"op": "file", "repo": "org/model", "file": "nothere.json"}, c)
    expect_error(r, "EntryNotFoundError", "missing file -> EntryNotFoundError")
    check(os.path.isfile(os.path.join(c, "models--org--model", ".no_exist", commit, "nothere.json")),
          ".no_exist marker written from X-Repo-Commit")
    r = client({"op": "file", "repo": "org/model", "file": "config.json"}, new_cache("bad"), token="hf_wrong")
    check(not r["ok"] and r.get("status") == 401 and "RepositoryNotFoundError" not in r.get("mro", []),
          f"wrong token -> 401 'Invalid credentials' (got {r.get('error')} {r.get('status')})")

    print("gated repo")
    r = client({"op": "snapshot", "repo": "org/gated"}, new_cache("g1"))
    expect_error(r, "GatedRepoError", "gated without token -> GatedRepoError (401)", status=401)
    r = client({"op": "snapshot", "repo": "org/gated"}, new_cache("g2"), token=TOKEN_NO_ACCESS)
    expect_error(r, "GatedRepoError", "gated with no-access token -> GatedRepoError (403)", status=403)
    if not r["ok"]:
        check("not in the authorized list" in r.get("message", ""), "403 message carried to the client")
    reset_stats()
    r = client({"op": "snapshot", "repo": "org/gated"}, new_cache("g3"), token=TOKEN)
    if expect_ok(r, "gated with the good token succeeds"):
        identical(r["path"], "org/gated", "org/gated")
    r = client({"op": "snapshot", "repo": "org/model"}, new_cache("tok"), token=TOKEN)
    expect_ok(r, "public repo with a token succeeds")
    s = stats()
    check(s["requests"].get("cdn_get", 0) >= 2 and s["cdn_auth_leaks"] == 0,
          f"client with a token sent no Authorization to the CDN (cdn_auth_leaks={s['cdn_auth_leaks']})")
    http("GET", f"http://127.0.0.1:{CDN_PORT}/lfs/{'0' * 64}?expires=1&signature=x", {"Authorization": "Bearer x"})
    check(stats()["cdn_auth_leaks"] == 1, "cdn_auth_leaks counts an Authorization header sent to the CDN")

    print("pagination (page size 2), symlinks, LFS by size")
    reset_stats()
    r = client({"op": "snapshot", "repo": "org/many"}, new_cache("many"))
    if expect_ok(r, "snapshot_download('org/many') succeeds"):
        identical(r["path"], "org/many", "org/many (13 entries over 7 pages)")
    check(stats()["requests"].get("tree", 0) == 7, f"7 tree pages requested (got {stats()['requests'].get('tree')})")
    r = client({"op": "tree", "repo": "org/many"}, new_cache("t"))
    if expect_ok(r, "non-recursive list_repo_tree"):
        top = {(e["path"], e["type"]) for e in r["entries"]}
        check(("a", "RepoFolder") in top and ("f0.txt", "RepoFile") in top and not any("/" in p for p, _ in top),
              "non-recursive tree lists the top level with folders")
    r = client({"op": "tree", "repo": "org/many", "kw": {"path_in_repo": "a", "recursive": True}}, new_cache("t2"))
    if expect_ok(r, "list_repo_tree(path_in_repo='a', recursive=True)"):
        check({e["path"] for e in r["entries"]} == {"a/b", "a/b/deep.bin", "a/g0.json", "a/g1.json", "a/g2.json"},
              "sub-tree listing")
    tree = json.loads(http("GET", f"{HUB}/api/models/org/many/tree/main?recursive=1&cursor=0")[2])
    st, h, body = http("GET", f"{HUB}/api/models/org/many/tree/main?recursive=true")
    entries, url = [], f"{HUB}/api/models/org/many/tree/main?recursive=true"
    while url:
        st, h, body = http("GET", url)
        entries += json.loads(body)
        link = h.get("Link")
        url = link[link.index("<") + 1:link.index(">")] if link else None
    by_path = {e["path"]: e for e in entries}
    src = source_files("org/many")
    big = src["big.dat"]
    ok = by_path["big.dat"].get("lfs", {}).get("oid") == hashlib.sha256(big).hexdigest() and \
        by_path["big.dat"]["size"] == len(big) and "lfs" in by_path["a/b/deep.bin"] and \
        by_path["f1.txt"]["oid"] == git_blob_sha1(src["f1.txt"]) and "lfs" not in by_path["f1.txt"]
    check(ok and len(tree) == 2, "tree entries: oid/size/lfs as specified")

    print("Range requests (urllib)")
    cfg = source_files("org/model")["config.json"]
    st, h, body = http("GET", f"{HUB}/org/model/resolve/main/config.json", {"Range": "bytes=2-5"})
    check(st == 206 and body == cfg[2:6] and h["Content-Range"] == f"bytes 2-5/{len(cfg)}", "Hub plain file bytes=2-5")
    st, h, body = http("GET", f"{HUB}/org/model/resolve/main/config.json", {"Range": "bytes=10-"})
    check(st == 206 and body == cfg[10:], "Hub plain file bytes=10-")
    st, h, body = http("GET", f"{HUB}/org/model/resolve/main/config.json", {"Range": "bytes=-4"})
    check(st == 206 and body == cfg[-4:], "Hub plain file bytes=-4")
    st, h, body = http("GET", f"{HUB}/org/model/resolve/main/config.json", {"Range": f"bytes={len(cfg)}-"})
    check(st == 416 and h["Content-Range"] == f"bytes */{len(cfg)}", "Hub plain file unsatisfiable -> 416")
    st, h, body = http("HEAD", f"{HUB}/org/model/resolve/main/config.json")
    check(st == 200 and h["ETag"] == f'"{git_blob_sha1(cfg)}"' and h["X-Repo-Commit"] == commit and
          h["Content-Length"] == str(len(cfg)) and h["Accept-Ranges"] == "bytes", "HEAD plain file headers")
    st, h, body = http("HEAD", f"{HUB}/org/model/resolve/{commit}/model.safetensors")
    model = source_files("org/model")["model.safetensors"]
    sha = hashlib.sha256(model).hexdigest()
    check(st == 302 and h["X-Linked-Etag"] == f'"{sha}"' and h["X-Linked-Size"] == str(len(model)) and
          h["ETag"] != f'"{sha}"' and h["Content-Length"] == "0" and
          h["Location"].startswith(f"http://127.0.0.1:{CDN_PORT}/lfs/{sha}?"), "HEAD LFS file: 302 + linked headers")
    loc = h["Location"]
    st, h, body = http("GET", loc, {"Range": "bytes=1000-1999"})
    check(st == 206 and body == model[1000:2000] and h["Content-Range"] == f"bytes 1000-1999/{len(model)}",
          "CDN bytes=1000-1999")
    st, h, body = http("GET", loc, {"Range": "bytes=2999990-"})
    check(st == 206 and body == model[-10:], "CDN bytes=2999990-")
    st, h, body = http("GET", loc, {"Range": "bytes=3000000-"})
    check(st == 416 and h["Content-Range"] == "bytes */3000000", "CDN unsatisfiable -> 416")
    st, h, body = http("GET", loc)
    check(st == 200 and body == model and h["Accept-Ranges"] == "bytes", "CDN full GET")
    st, h, body = http("GET", f"{HUB}/org/model/resolve/refs%2Fpr%2F1/config.json")
    check(st == 404 and h["X-Error-Code"] == "RevisionNotFound", "percent-encoded unknown revision -> RevisionNotFound")

    print("faults: cut_after (Hub GET and CDN GET)")
    reset_stats()
    faults({"cut_after": {"model.safetensors": 1_000_000, "org/model/tokenizer.json": 100}})
    r = client({"op": "snapshot", "repo": "org/model"}, new_cache("cut"))
    if expect_ok(r, "snapshot_download with cut connections succeeds (client resumes with Range)"):
        identical(r["path"], "org/model", "after cut_after")
    s = stats()
    check(s["faults_injected"].get("cut_after") == 2, f"2 cuts injected (got {s['faults_injected']})")
    # huggingface_hub reads the body in 10 MiB chunks, so a 1 MB partial is never written and it starts over
    served = s["bytes_served"].get("org/model/model.safetensors")
    check(served == 4_000_000, f"the 3 MB LFS file was cut at 1 MB then served again in full (served {served})")

    print("faults: cut_after on a 24 MB file (the client resumes past its first 10 MiB chunk)")
    reset_stats()
    faults({"cut_after": {"org/big/weights.gguf": 15_000_000}})
    r = client({"op": "snapshot", "repo": "org/big"}, new_cache("bigcut"))
    if expect_ok(r, "snapshot_download('org/big') with a cut succeeds"):
        identical(r["path"], "org/big", "org/big after cut_after")
    served = stats()["bytes_served"].get("org/big/weights.gguf")
    check(served == 15_000_000 + 24_000_000 - 10 * 1024 * 1024,
          f"resumed with Range: bytes=10485760- (served {served} = 15,000,000 + 24,000,000 - 10,485,760)")

    print("faults: flip_byte (the Python client does not hash: the corruption must land on disk)")
    faults({"flip_byte": {"sub/dir/extra.txt": 1, "model.safetensors": 1}})
    r = client({"op": "snapshot", "repo": "org/model"}, new_cache("flip"))
    if expect_ok(r, "snapshot_download with flipped bytes 'succeeds'"):
        src = source_files("org/model")
        for p in ("sub/dir/extra.txt", "model.safetensors"):
            got = open(os.path.join(r["path"], p), "rb").read()
            diff = [i for i in range(len(got)) if got[i] != src[p][i]] if len(got) == len(src[p]) else None
            check(diff == [len(got) // 2] and got[len(got) // 2] == src[p][len(got) // 2] ^ 0xFF,
                  f"{p}: exactly the middle byte flipped, length intact")
    check(stats()["faults_injected"].get("flip_byte") == 2, "flip_byte counted")
    faults({})

    # 429 is retried by huggingface_hub everywhere but on /revision (the seed keeps the first draw, which is the
    # /revision call, clean). A 500 on a GET or on /revision ends the call: re-run snapshot_download until done.
    for label, rates, allowed_attempts in (("429", {"429": 0.3}, 1), ("500", {"500": 0.1}, 10),
                                           ("429+500", {"429": 0.15, "500": 0.1}, 10)):
        print(f"faults: status_rate {rates}")
        faults({"status_rate": rates, "seed": 7})
        reset_stats()
        cache = new_cache("status" + label)
        attempts, errors = 0, []
        while attempts < allowed_attempts:
            attempts += 1
            r = client({"op": "snapshot", "repo": "org/model"}, cache)
            if r["ok"]:
                break
            errors.append(f"{r['error']}: {r['message'].splitlines()[0][:160] if r['message'] else ''}")
        s = stats()
        faults({})
        print(f"       {attempts} snapshot_download call(s); injected {s['faults_injected']}; requests {s['requests']}")
        for e in errors:
            print(f"       failed attempt: {e}")
        if expect_ok(r, f"status {label}: download completes (within {attempts} call(s))"):
            identical(r["path"], "org/model", f"after status {label}")
        check(sum(s["faults_injected"].values()) > 0, f"status {label}: faults were injected")

    print("faults: one 429 or 500 on one kind of request; does huggingface_hub retry it?")
    matrix = {}
    for kind in ("revision", "tree", "head", "get", "cdn_get"):
        for status in ("429", "500"):
            faults({"status_rate": {status: 1.0}, "status_kinds": [kind], "status_count": 1})
            reset_stats()
            cache = new_cache(f"one-{kind}-{status}")
            r1 = client({"op": "snapshot", "repo": "org/model"}, cache)
            r = r1 if r1["ok"] else client({"op": "snapshot", "repo": "org/model"}, cache)
            injected = stats()["faults_injected"].get(status, 0)
            matrix[(kind, status)] = "retried" if r1["ok"] else f"fails ({r1['error']})"
            print(f"       {status} on {kind:8}: {matrix[(kind, status)]}")
            check(injected == 1, f"one {status} injected on {kind}")
            if expect_ok(r, f"{status} on {kind}: complete after at most one more snapshot_download call"):
                identical(r["path"], "org/model", f"{status} on {kind}")
    faults({})
    faults({"status_rate": {"429": 1.0}})
    st, h, body = http("GET", f"{HUB}/api/models/org/model/revision/main")
    check(st == 429 and h["Retry-After"] == "1" and "r=0" in h["RateLimit"], "429 carries Retry-After and RateLimit")
    check(http("GET", HUB + "/__stats")[0] == 200, "control endpoints are never faulted")
    faults({})

    print("faults: range-aware cut_after / flip_byte (as a parallel ranged client sees them)")
    reset_stats()
    faults({"cut_after": {"model.safetensors": 600_000}, "flip_byte": {"model.safetensors": 1}})
    st, h, body = http("GET", loc, {"Range": "bytes=0-499999"})      # shorter than the cut, no middle byte
    # the next one is cut before the middle byte (1,500,000): the flip waits for the one after
    check(st == 206 and body == model[:500_000], "a range shorter than the cut and without the middle is served intact")
    try:
        st, h, body = http("GET", loc, {"Range": "bytes=800000-2999999"})
        got = len(body)
    except Exception as e:  # http.client.IncompleteRead
        got = len(getattr(e, "partial", b""))
    check(got == 600_000, f"the next longer range is cut after 600000 bytes (got {got})")
    st, h, body = http("GET", loc, {"Range": "bytes=1000000-2999999"})
    check(st == 206 and len(body) == 2_000_000 and body[500_000] == model[1_500_000] ^ 0xFF and
          body[:500_000] == model[1_000_000:1_500_000] and body[500_001:] == model[1_500_001:3_000_000],
          "flip_byte waits for a range that delivers the middle byte, and flips only it")
    check(stats()["faults_injected"] == {"cut_after": 1, "flip_byte": 1}, f"faults counted {stats()['faults_injected']}")
    faults({})

    print("faults: slow_bytes_per_second")
    faults({"slow_bytes_per_second": 1_000_000})
    t0 = time.time()
    st, h, body = http("GET", loc, {"Range": "bytes=0-499999"})
    dt = time.time() - t0
    faults({})
    check(st == 206 and len(body) == 500_000 and 0.4 <= dt <= 3, f"500 kB at 1 MB/s took {dt:.2f}s")


try:
    main()
except Exception:
    traceback.print_exc()
    failures.append("check script crashed")
finally:
    server.kill()  # SIGKILL: a parent test process may have left SIGTERM blocked for its children
    server.wait()
    if opts.keep:
        print("kept", tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)

print(f"\n{len(passed)} passed, {len(failures)} failed")
for f in failures:
    print("FAILED:", f)
sys.exit(1 if failures else 0)
