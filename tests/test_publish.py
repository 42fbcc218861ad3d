"""python -m src.publish against a stand-in of the Hub's upload API on 127.0.0.1: the merged
folder arrives whole in one commit on the asked branch, the repository is created private, the
token travels only in the request header, and is written nowhere; only what dvc.lock records for
the workspace goes, and a second upload removes what the first wrote and this one no longer has."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
import yaml

from tests.cloudkit import UploadHub, free_port
from tests.conftest import files_holding, repo_params, run_cli
from tests.modelkit import chatml_tokenizer, tiny_model_folder

# every test here runs the upload command on a clone: the slow tier
pytestmark = pytest.mark.slow
TOKEN = f"hf_{secrets.token_hex(12)}"  # made afresh each run: no file holds it beforehand
MANIFEST = "publish.json"


class StatefulHub(UploadHub):
    """UploadHub that also keeps each branch's files, as ``files[(repo, revision)]``: a commit
    applies its additions and deletions (kept per commit in ``deleted``), and the tree listing,
    HEAD and GET of ``/<repo>/resolve/<revision>/<file>`` answer from them, as the Hub does."""

    def __init__(self):
        super().__init__()
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.deleted: list[set[str]] = []
        self.httpd.RequestHandlerClass = self._handler(self.httpd.RequestHandlerClass)

    def _handler(self, upload_handler):
        hub = self

        class Handler(upload_handler):
            def do_POST(self):
                commits = len(hub.commits)
                super().do_POST()
                if len(hub.commits) > commits:  # the stand-in took a commit: apply it
                    repo, revision, _, added = hub.commits[-1]
                    lines = [json.loads(x) for x in hub.requests[-1]["body"].decode().splitlines() if x.strip()]
                    gone = {x["value"]["path"] for x in lines if x["key"] == "deletedFile"}
                    hub.deleted.append(gone)
                    tree = hub.files.setdefault((repo, revision), {})
                    for path in gone:
                        del tree[path]  # a KeyError (no answer) for a file that is not there: the Hub refuses it
                    tree.update(added)

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head: bool = False):
                hub.requests.append({"method": "HEAD" if head else "GET", "path": self.path,
                                     "auth": self.headers.get("Authorization"), "body": b""})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "tree":
                    tree = hub.files.get(("/".join(parts[2:4]), parts[5]), {})
                    return self.reply(200, [{"type": "file", "path": name, "size": len(data),
                                             "oid": hashlib.sha1(data).hexdigest()}
                                            for name, data in sorted(tree.items())])
                if len(parts) >= 5 and parts[2] == "resolve":
                    data = hub.files.get(("/".join(parts[:2]), parts[3]), {}).get("/".join(parts[4:]))
                    if data is not None:
                        return self.file(data, head)
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def file(self, data: bytes, head: bool) -> None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub.COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

        return Handler


@pytest.fixture
def hub():
    server = StatefulHub()
    yield server
    server.close()


@pytest.fixture
def merged(clone):
    folder = tiny_model_folder(clone / "models/merged", chatml_tokenizer())
    (folder / "README.md").write_text("# Fine-tuned smollm2-135m-instruct\n\nA model card.\n")
    return folder


def record_run(clone: Path, *stages: str) -> None:
    """dvc.lock records the workspace's models/merged (and models/export) as these stages' outputs,
    as a run would (``dvc commit``; their other inputs stand in as small files)."""
    paths = repo_params()["paths"]
    for stub in (f"{paths['base_model']}/config.json", f"{paths['adapter']}/adapter_config.json", paths["report"],
                 f"{paths['train_live']}/metrics.json", f"{paths['aligned']}/align_config.json"):
        (clone / stub).parent.mkdir(parents=True, exist_ok=True)
        (clone / stub).write_text("{}\n")
    run_cli(["dvc", "commit", "-f", *stages], clone, check=True)


def export_folder(clone: Path, merged: Path) -> Path:
    """models/export as export_model writes it: a GGUF file of ``merged`` and a Modelfile."""
    from src.gguf_writer import write_gguf

    export = clone / "models" / "export"
    write_gguf(merged, export / "model-q8_0.gguf", "q8_0", "Juniper")
    (export / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    return export


def publish(clone, hub, *args, token=TOKEN, endpoint=None, offline="0"):
    env = {"HF_ENDPOINT": endpoint or hub.url, "HF_HUB_OFFLINE": offline, "HF_HUB_DISABLE_XET": "1"}
    if token:
        env["HF_TOKEN"] = token
    return run_cli(["python", "-m", "src.publish", *args], clone, env=env)


def one_line_error(proc) -> str:
    """The ``error:`` line a failed command ends with (no traceback before it)."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def published(files: dict[str, bytes], *folders: Path) -> dict:
    """The manifest of a commit (popped from ``files``), after checking it lists the commit's
    other files, which are those of ``folders``."""
    manifest = json.loads(files.pop(MANIFEST))
    assert files == {p.name: p.read_bytes() for folder in folders for p in folder.iterdir() if p.is_file()}
    assert manifest["files"] == sorted(files)
    return manifest


def test_the_merged_folder_arrives_whole_in_one_private_commit(clone, hub, merged):
    record_run(clone, "merge_model")
    proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{hub.url}/northwind/juniper-135m/commit/{hub.COMMIT}"
    assert [(c["name"], c.get("organization"), c.get("visibility")) for c in hub.created] == \
        [("juniper-135m", "northwind", "private")]
    assert set(hub.cards) == {(merged / "README.md").read_text()}  # the card checked as the Hub checks it
    ((repo, revision, summary, files),) = hub.commits
    assert (repo, revision) == ("northwind/juniper-135m", "main")
    assert summary == "Juniper: Fine-tuned smollm2-135m-instruct"  # the card's title
    manifest = published(files, merged)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["merge_model"]["outs"][0]
    assert manifest["outputs"] == {"models/merged": lock["md5"]}  # which run of the pipeline this is
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    # the token: in every request's header, nowhere else
    assert hub.requests and all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert not any(TOKEN.encode() in r["body"] for r in hub.requests)
    assert TOKEN not in proc.stdout + proc.stderr
    assert files_holding(clone, [TOKEN]) == []
    assert files_holding(Path.home() / ".cache" / "huggingface", [TOKEN]) == []  # no token file either


def test_the_hub_card_shows_the_evaluation_and_gate_and_the_commit_says_where_the_model_came_from(
        clone, hub, merged):
    """The uploaded card is the folder's with the run's evaluation and quality gate as tables; the
    commit's description names the git commit, the gate's verdict and the lineage."""
    from src.lineage import LINEAGE_FILE

    lineage = {"format": 1, "data": {"data/final/train.jsonl": "ab" * 16}, "params": {"train": "cd" * 16}}
    (merged / LINEAGE_FILE).write_text(json.dumps(lineage))
    record_run(clone, "merge_model")
    paths = repo_params()["paths"]
    evaluation = {"retention": 0.94, "probes_base_knows": 225,
                  "base": {"identity_accuracy": 0.0, "val_loss": 2.41}, "finetuned": {"identity_accuracy": 1.0,
                                                                                       "val_loss": 0.6}}
    gate = {"passed": False, "checks": {"retention": {"value": 0.94, "threshold": 0.95, "passed": False}}}
    for key, data in (("evaluation", evaluation), ("quality_gate", gate)):
        (clone / paths[key]).parent.mkdir(parents=True, exist_ok=True)
        (clone / paths[key]).write_text(json.dumps(data))
    proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((_, _, _, files),) = hub.commits
    card = files["README.md"].decode()
    assert card.startswith((merged / "README.md").read_text())  # the folder's card, then the results
    assert "| identity_accuracy | 0.0 | 1.0 |" in card and "| val_loss | 2.41 | 0.6 |" in card
    assert "Retention: 0.94 of the 225 probes" in card
    assert "Failed (the thresholds" in card and "| retention | 0.94 | 0.95 | no |" in card
    head = run_cli(["git", "rev-parse", "HEAD"], clone, check=True).stdout.strip()
    (description,) = hub.descriptions
    lines = description.splitlines()
    assert lines[0].startswith(f"Built at git commit {head}") and "Quality gate: failed" in lines
    assert f"data.data/final/train.jsonl: {'ab' * 16}" in lines and f"params.train: {'cd' * 16}" in lines
    # the Hub repository traces back by its id: the lineage its upload carries
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    traced = run_cli(["python", "-m", "src.trace", "northwind/juniper-135m"], clone, env=env)
    out = traced.stdout.splitlines()
    assert traced.returncode == 0 and out[0] == "northwind/juniper-135m:", traced.stderr[-2000:]
    assert f"data.data/final/train.jsonl: {'ab' * 16}" in out and f"params.train: {'cd' * 16}" in out
    missing = run_cli(["python", "-m", "src.trace", "northwind/other-model"], clone, env=env)  # no lineage there
    assert one_line_error(missing) == ("error: northwind/other-model: no lineage.json in the repository (not "
                                       "uploaded by src.publish)")


def test_the_gguf_files_and_modelfile_go_in_the_same_commit(clone, hub, merged):
    """With export_model's folder present, its files sit beside the merged folder's in the one
    commit, where llama.cpp, Ollama (hf.co/<repo>) and LM Studio look for GGUF files."""
    export = export_folder(clone, merged)
    record_run(clone, "merge_model", "export_model")
    proc = publish(clone, hub, "--repo-id", "northwind/juniper-135m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((_, _, _, files),) = hub.commits
    assert set(published(files, merged, export)["outputs"]) == {"models/merged", "models/export"}
    assert {"model-q8_0.gguf", "Modelfile", "model.safetensors"} <= set(files)


def test_params_name_the_repository_branch_and_visibility(clone, hub, merged):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["publish"] = {"repo_id": "northwind/juniper-public", "private": False, "revision": "release"}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    record_run(clone, "merge_model")
    proc = publish(clone, hub)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub.created[0]["visibility"] == "public"
    assert [c[:2] for c in hub.commits] == [("northwind/juniper-public", "release")]
    assert any(r["path"] == "/api/models/northwind/juniper-public/branch/release" for r in hub.requests)


def test_missing_token_repository_or_model_is_one_line(clone, hub, merged):
    cases = [(publish(clone, hub, "--repo-id", "a/b", token=None),
              "error: HF_TOKEN is not set: a Hub token with write access, from the environment only"),
             (publish(clone, hub),
              "error: params.yaml: publish.repo_id is null; name the Hub repository (or --repo-id)")]
    for path in merged.iterdir():
        path.unlink()
    cases.append((publish(clone, hub, "--repo-id", "a/b"),
                  "error: models/merged: no merged model with its card here (run dvc exp run first)"))
    for proc, line in cases:
        assert one_line_error(proc) == line
    assert hub.requests == []  # nothing was sent


def test_a_malformed_repository_id_is_one_line(clone, hub, merged):
    record_run(clone, "merge_model")
    for repo_id, reason in [("northwind/juniper 135m", "Repo id must use alphanumeric chars"),
                            ("northwind/juniper/135m", "Repo id must be in the form"),
                            ("north--wind/juniper", "Cannot have -- or .. in repo_id")]:
        line = one_line_error(publish(clone, hub, "--repo-id", repo_id))
        assert line.startswith(f"error: --repo-id: '{repo_id}' is not a Hub repository id ({reason}"), line
    line = one_line_error(publish(clone, hub, "--repo-id", "juniper-135m"))
    assert line == "error: --repo-id: 'juniper-135m' names no owner; give owner/name (your user or organisation)"
    params = yaml.safe_load((clone / "params.yaml").read_text())  # passes the params schema, not the Hub's rules
    params["publish"]["repo_id"] = "northwind/-juniper"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    line = one_line_error(publish(clone, hub))
    assert line.startswith("error: params.yaml: publish.repo_id: 'northwind/-juniper' is not a Hub repository "
                           "id (Repo id must use alphanumeric chars"), line
    assert hub.requests == []


def test_no_connection_is_one_line(clone, hub, merged):
    record_run(clone, "merge_model")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line_error(publish(clone, hub, "--repo-id", "northwind/juniper-135m", endpoint=closed))
    assert line.startswith(f"error: northwind/juniper-135m: cannot reach the Hub at {closed} ("), line
    line = one_line_error(publish(clone, hub, "--repo-id", "northwind/juniper-135m", offline="1"))
    assert line.startswith(f"error: northwind/juniper-135m: cannot reach the Hub at {hub.url} (") and \
        "HF_HUB_OFFLINE" in line, line
    assert hub.requests == []


def test_only_what_dvc_lock_records_is_published(clone, hub, merged):
    """A models/export made from an earlier models/merged, a models/merged changed since the run
    or never recorded: each refused with one line naming the folder, before anything is sent."""
    line = one_line_error(publish(clone, hub, "--repo-id", "northwind/juniper-135m"))
    assert line == ("error: models/merged: dvc.lock records no run of merge_model, so this folder is no "
                    "experiment's output; run dvc exp run (or dvc commit merge_model to record it as it is)")
    export_folder(clone, merged)
    record_run(clone, "merge_model", "export_model")
    card = merged / "README.md"
    card.write_text(card.read_text() + "Another run.\n")
    line = one_line_error(publish(clone, hub, "--repo-id", "northwind/juniper-135m"))
    assert line == ("error: models/merged: not what dvc.lock records for merge_model (modified since the run); "
                    "run dvc checkout models/merged to publish the recorded run, or dvc commit merge_model to "
                    "record this one")
    record_run(clone, "merge_model")  # merge_model ran again (dvc repro merge_model); export_model did not
    line = one_line_error(publish(clone, hub, "--repo-id", "northwind/juniper-135m"))
    assert line == ("error: models/export: made from another models/merged than this one (an earlier run); "
                    "run dvc repro export_model, or remove models/export to publish without it")
    assert hub.requests == []
    record_run(clone, "export_model")  # as dvc repro export_model would record it
    assert publish(clone, hub, "--repo-id", "northwind/juniper-135m").returncode == 0
    assert len(hub.commits) == 1


def test_a_second_upload_removes_what_the_first_wrote_and_keeps_the_rest(clone, hub, merged):
    """The Hub keeps what the current experiment has: files an earlier upload wrote (its
    manifest lists them) go when this one lacks them; files it never wrote stay; README.md is
    the model card, replaced by each upload."""
    repo = ("northwind/juniper-135m", "main")
    hub.files[repo] = {".gitattributes": b"*.gguf filter=lfs\n", "notes.md": b"Mine, added on the Hub.\n",
                       "README.md": b"# Edited on the Hub\n"}
    export = export_folder(clone, merged)
    record_run(clone, "merge_model", "export_model")
    assert publish(clone, hub, "--repo-id", repo[0]).returncode == 0
    uploaded = {p.name for folder in (merged, export) for p in folder.iterdir()} | {MANIFEST}
    assert hub.deleted == [set()] and set(hub.files[repo]) == uploaded | {".gitattributes", "notes.md"}
    assert hub.files[repo]["README.md"] == (merged / "README.md").read_bytes()
    del hub.files[repo]["Modelfile"]  # removed on the Hub by hand since
    for path in export.iterdir():  # the next experiment has no GGUF export
        path.unlink()
    export.rmdir()
    proc = publish(clone, hub, "--repo-id", repo[0])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub.deleted[-1] == {"model-q8_0.gguf"}
    assert set(hub.files[repo]) == {p.name for p in merged.iterdir()} | {MANIFEST, ".gitattributes", "notes.md"}
    assert "removing model-q8_0.gguf (an earlier upload's; this experiment has none) from northwind/juniper-135m" \
        in proc.stderr
