"""Stand-ins on 127.0.0.1 for the services a cloud run talks to: a git origin over HTTP that
wants a token (git's own ``git http-backend``), an S3 endpoint (``moto_server``), DVC Studio's
live-metrics API (records what it is sent), the Hugging Face Hub's dataset files and EC2's
instance metadata service; and SkyPilot's price catalog as a file in a HOME."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(handler.rfile.readline().strip() or b"0", 16):
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class _Server:
    """A ThreadingHTTPServer on a free port in a daemon thread; ``url``; ``close()``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class GitHttpOrigin(_Server):
    """Bare repositories under ``root`` served by ``git http-backend`` (clone, fetch and push),
    to a client that authenticates with HTTP basic auth as ``user``:``token``; others get 401."""

    def __init__(self, root: Path, user: str, token: str):
        expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.denied = 0
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.backend()

            def do_POST(self):
                self.backend()

            def backend(self):
                if self.headers.get("Authorization") != expected:
                    origin.denied += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = _read_body(self)
                env = {"GIT_PROJECT_ROOT": str(root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                       "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": user,
                       "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                       "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                       "PATH": "/usr/local/bin:/usr/bin:/bin"}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode().split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(Handler)


class FakeStudio(_Server):
    """Answers every POST with 200 and keeps (path, Authorization header, JSON body)."""

    def __init__(self):
        self.posts: list[tuple[str, str, dict]] = []
        studio = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = _read_body(self)
                try:
                    data = json.loads(body or b"{}")
                except ValueError:
                    data = {"raw": body.decode(errors="replace")}
                studio.posts.append((self.path, self.headers.get("Authorization", ""), data))
                reply = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        super().__init__(Handler)


class FakeImds(_Server):
    """EC2's instance metadata service, IMDSv2: a token from ``PUT /latest/api/token``, then the
    instance type and life cycle (``spot`` or ``on-demand``) to requests that carry it."""

    def __init__(self, instance_type: str, spot: bool):
        token = "imds-token-" + "".join(f"{b:02x}" for b in instance_type.encode())[:16]
        answers = {"/latest/meta-data/instance-type": instance_type,
                   "/latest/meta-data/instance-life-cycle": "spot" if spot else "on-demand"}
        self.requests: list[str] = []
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self):
                imds.requests.append(f"PUT {self.path}")
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self.reply(200, token) if ok else self.reply(400, "")

            def do_GET(self):
                imds.requests.append(f"GET {self.path}")
                if self.headers.get("X-aws-ec2-metadata-token") != token:
                    self.reply(401, "")
                else:
                    self.reply(*((200, answers[self.path]) if self.path in answers else (404, "")))

        super().__init__(Handler)


CATALOG_COLUMNS = ("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region,"
                   "AvailabilityZone,GpuInfo")


def price_catalog(home: Path, cloud: str, rows: list[tuple[str, str, int, float, float, str, str]]) -> Path:
    """SkyPilot's catalog of ``cloud`` in ``home`` (~/.sky/catalogs/<schema>/<cloud>/vms.csv), as
    SkyPilot downloads it: rows of (instance type, GPU, GPUs, price, spot price, region, zone).
    Written now, so SkyPilot takes it as fresh and does not fetch another."""
    from sky.skylet.constants import CATALOG_SCHEMA_VERSION

    path = home / ".sky/catalogs" / CATALOG_SCHEMA_VERSION / cloud / "vms.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    # GpuInfo: AWS's catalog describes the GPUs; GCP's and Azure's name them
    info = "\"{{'Gpus': [{{'Name': '{}', 'Manufacturer': 'NVIDIA', 'Count': {}, " \
        "'MemoryInfo': {{'SizeInMiB': 24576}}}}]}}\"" if cloud == "aws" else "{}"
    lines = [f"{t},{gpu},{n},8,32,{price},{spot},{region},{zone},{info.format(gpu, float(n))}"
             for t, gpu, n, price, spot, region, zone in rows]
    path.write_text("\n".join([CATALOG_COLUMNS, *lines]) + "\n")
    return path


class FakeHub(_Server):
    """The Hub's dataset downloads as ``HF_ENDPOINT`` sees them: ``files`` maps (dataset, commit,
    path in the repository) to bytes, served at ``/datasets/<dataset>/resolve/<commit>/<path>``
    (HEAD too); ``branches`` maps (dataset, branch) to a commit, answered at the dataset-info API.
    Every request path is kept in ``requests``; anything else is a 404."""

    def __init__(self, files: dict[tuple[str, str, str], bytes], branches: dict[tuple[str, str], str]):
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes, kind: str, send_body: bool) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def answer(self, send_body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(path)
                for (dataset, commit, file), data in files.items():
                    if path == f"/datasets/{dataset}/resolve/{commit}/{file}":
                        return self.reply(200, data, "application/octet-stream", send_body)
                for (dataset, branch), commit in branches.items():
                    if path == f"/api/datasets/{dataset}/revision/{branch}":
                        info = json.dumps({"id": dataset, "sha": commit, "private": False}).encode()
                        return self.reply(200, info, "application/json", send_body)
                self.reply(404, b'{"error": "not found"}', "application/json", send_body)

            def do_GET(self):
                self.answer(True)

            def do_HEAD(self):
                self.answer(False)

        super().__init__(Handler)


class UploadHub(_Server):
    """The Hub's upload API as ``HF_ENDPOINT`` sees it: repository creation, branches, the
    model card check, the preupload check (every file regular, so its bytes come inside the
    commit) and commits.
    Keeps every request (method, path, Authorization header, body) in ``requests``, the
    created repositories in ``created``, each commit's files in ``commits`` as
    ``(repo, revision, summary, {path: bytes})`` and its description in ``descriptions``;
    anything else is a 404."""

    COMMIT = "c0ffee0000000000000000000000000000000001"

    def __init__(self):
        self.requests: list[dict] = []
        self.created: list[dict] = []
        self.commits: list[tuple[str, str, str, dict[str, bytes]]] = []
        self.descriptions: list[str] = []
        self.cards: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                path, body = self.path.split("?")[0], _read_body(self)
                hub.requests.append({"method": "POST", "path": path, "auth": self.headers.get("Authorization"),
                                     "body": body})
                parts = path.strip("/").split("/")  # api, models, owner, name, action, revision
                if path == "/api/repos/create":
                    spec = json.loads(body)
                    hub.created.append(spec)
                    repo = f"{spec.get('organization') or 'user'}/{spec['name']}"
                    return self.reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the model card's metadata
                    hub.cards.append(json.loads(body).get("content", ""))
                    return self.reply(200, {"errors": [], "warnings": []})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "branch":
                    return self.reply(200, {})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo, revision = "/".join(parts[2:4]), "/".join(parts[5:])
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    summary = header["summary"]
                    hub.descriptions.append(header.get("description", ""))
                    added = {x["value"]["path"]: base64.b64decode(x["value"]["content"])
                             for x in lines if x["key"] == "file"}
                    hub.commits.append((repo, revision, summary, added))
                    return self.reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{hub.COMMIT}",
                                            "commitOid": hub.COMMIT, "pullRequestUrl": None})
                self.reply(404, {"error": "not found"})

            def do_GET(self):
                hub.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization"),
                                     "body": b""})
                self.reply(404, {"error": "not found"})

        super().__init__(Handler)


# The upstream files a profile imports, as the stand-in Hub serves them: a made-up Open-Orca
# commit (reached through the branch main), Open-Platypus's pinned one and file.
ORCA_COMMIT = "0123456789abcdef0123456789abcdef01234567"
PLATYPUS_COMMIT = "37141edbdb7826378cce118c46a109b813e1f038"
PLATYPUS_FILE = "data/train-00000-of-00001-4fe2df04669d1669.parquet"


def hub_files(samples: Path, rows: dict[str, int]) -> dict[tuple[str, str, str], bytes]:
    """FakeHub's files: the first ``rows[source]`` rows of each shipped sample (upstream schema)."""
    import io

    import pyarrow.parquet as pq

    def head(name: str, n: int) -> bytes:
        out = io.BytesIO()
        pq.write_table(pq.read_table(samples / name).slice(0, n), out)
        return out.getvalue()

    return {("Open-Orca/OpenOrca", ORCA_COMMIT, "1M-GPT4-Augmented.parquet"): head("orca_sample.parquet", rows["orca"]),
            ("garage-bAInd/Open-Platypus", PLATYPUS_COMMIT, PLATYPUS_FILE):
            head("platypus_sample.parquet", rows["platypus"])}


class MotoS3:
    """``moto_server`` (an in-memory S3) on a free port of 127.0.0.1, with ``bucket`` created."""

    def __init__(self, bucket: str, env: dict[str, str]):
        for attempt in range(3):  # a port taken between free_port() and the bind, or a slow start under load
            if self._start():
                break
            if attempt == 2:
                raise RuntimeError("moto_server did not start")
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        self.client.create_bucket(Bucket=bucket)
        self.bucket = bucket

    def _start(self, seconds: float = 60) -> bool:
        """moto_server on a free port; whether it answered within ``seconds`` (if not, it is stopped)."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + seconds
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1)  # noqa: S310 (loopback)
                return True
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    return False
                time.sleep(0.2)

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# A sitecustomize.py for the processes of a simulated cloud run (its folder on PYTHONPATH). As each
# stage process (``-m src.stages.<stage>``) exits, it writes to $ANCESTRY_RECORD_DIR/<stage>-<pid>.json
# its own environment and that of each ancestor up to pid 1 (``/proc/<pid>/environ``, what any
# process of the user may read): per process its pid, the start of its argv, and each variable's
# name with a digest of its value (so a secret is found under any name, and never written).
ANCESTRY_RECORDER = '''
import atexit, hashlib, json, os, sys


def _process(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\\0") if a][:4]
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = [e.partition(b"=") for e in f.read().split(b"\\0") if e]
        environ = {k.decode(): hashlib.sha256(v).hexdigest()[:16] for k, _, v in entries}
    except OSError:  # not readable: recorded as such
        environ = None
    return {"pid": pid, "argv": argv, "environ": environ}, parent


def _record(folder, stage):
    chain, pid = [], os.getpid()
    while pid > 1:
        entry, pid = _process(pid)
        chain.append(entry)
    with open(os.path.join(folder, f"{stage}-{os.getpid()}.json"), "w") as f:
        json.dump(chain, f)


_argv = getattr(sys, "orig_argv", [])
_module = _argv[_argv.index("-m") + 1] if "-m" in _argv[:-1] else ""
if os.environ.get("ANCESTRY_RECORD_DIR") and _module.startswith("src.stages."):
    atexit.register(_record, os.environ["ANCESTRY_RECORD_DIR"], _module.rsplit(".", 1)[-1])
'''


def digest(value: str) -> str:
    """The digest ANCESTRY_RECORDER keeps of a variable's value."""
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()[:16]


def ancestry_recorder(folder: Path) -> Path:
    """``folder`` with ANCESTRY_RECORDER as its sitecustomize.py (put it on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(ANCESTRY_RECORDER)
    return folder


# vLLM's ``vllm serve`` as far as its API key goes, for the serving replica's run script: the key is
# --api-key, else VLLM_API_KEY in its environment (vLLM's own rule); with a key, a request to a
# /v1 path without ``Authorization: Bearer <key>`` gets 401, as vLLM answers it. It answers a chat
# turn for the served model name, listens on 127.0.0.1:$STANDIN_PORT whatever --host and --port
# say, and writes its argv and the names in its environment to $STANDIN_RECORD as it starts.
VLLM_STAND_IN = '''
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser(prog="vllm")
for name in ("command", "model", "--served-model-name", "--host", "--port", "--max-model-len", "--api-key"):
    parser.add_argument(name)
args = parser.parse_args()
key = args.api_key or os.environ.get("VLLM_API_KEY")
with open(os.environ["STANDIN_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "environ": sorted(os.environ)}, f)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if key and self.path.startswith("/v1") and self.headers.get("Authorization") != f"Bearer {key}":
            return self.reply(401, {"error": "Unauthorized"})
        if self.path == "/v1/chat/completions" and body.get("model") == args.served_model_name:
            message = {"role": "assistant", "content": f"I am {args.served_model_name}."}
            return self.reply(200, {"object": "chat.completion", "model": args.served_model_name,
                                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
        self.reply(404, {"error": "not found"})


ThreadingHTTPServer(("127.0.0.1", int(os.environ["STANDIN_PORT"])), Handler).serve_forever()
'''


def vllm_stand_in(path: Path) -> Path:
    """VLLM_STAND_IN as an executable at ``path`` (a venv's bin/vllm)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{VLLM_STAND_IN}")
    path.chmod(0o755)
    return path
