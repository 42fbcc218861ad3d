"""The data half of the DAG through DVC itself, on a temporary clone."""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading

import pytest
import yaml

from src.records import prompt_key, read_jsonl
from tests.conftest import ROOT, repo_params, run_cli

# every test here runs dvc on a clone: the slow tier
pytestmark = pytest.mark.slow
PATHS = repo_params()["paths"]


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_repro_builds_leak_free_train_and_val(built_clone):
    train = list(read_jsonl(built_clone / PATHS["train"]))
    val = list(read_jsonl(built_clone / PATHS["val"]))
    for r in train + val:
        assert [t.role for t in r.prompt][-1] == "user"
        assert [t.role for t in r.completion] == ["assistant"]
        assert r.group is None
    assert not {prompt_key(r) for r in train} & {prompt_key(r) for r in val}
    # identity validation asks wordings that training never saw
    val_identity = {r.prompt[0].content for r in val if r.source == "identity"}
    train_identity = {r.prompt[0].content for r in train if r.source == "identity"}
    assert val_identity and not val_identity & train_identity
    held_out = list(read_jsonl(built_clone / PATHS["split_dir"] / "identity" / "val.jsonl"))
    intents = {r.group.split("/")[1] for r in held_out}
    assert intents == {"name", "creator", "purpose", "not_other", "not_other_creator"}
    # sources appear in sorted order
    sources = [r.source for r in train]
    assert sources == sorted(sources)

    report = json.loads((built_clone / PATHS["report"]).read_text())
    assert report["train_val_prompt_overlap"] == 0
    for split, records in (("train", train), ("val", val)):
        counts = report[split]["rows"]
        assert counts["total"] == len(records)
        for source in ("identity", "orca", "platypus"):
            assert counts[source] == sum(r.source == source for r in records) > 0
        assert 0 < report[split]["completion_chars"]["p50"] <= report[split]["completion_chars"]["max"]
    # the shipped samples carry empty, over-long and duplicate rows on purpose
    assert report["dropped"]["process_data_orca"]["empty_reply"] > 0
    assert report["dropped"]["process_data_orca"]["too_long"] > 0
    assert report["dropped"]["data_split_orca"]["duplicate"] > 0
    metrics_dir = built_clone / PATHS["metrics_dir"]
    orca = json.loads((metrics_dir / "process_data.json").read_text())["orca"]
    orca_split = json.loads((metrics_dir / "data_split.json").read_text())["orca"]
    assert orca_split["rows_in"] == orca["rows_out"]
    assert orca_split["train"] == report["train"]["rows"]["orca"]


def test_second_repro_runs_nothing_and_seed_change_reruns_split_and_merge(built_clone):
    again = run_cli(["dvc", "repro", "merge_data"], built_clone, check=True)
    assert stages_run(again.stdout) == set()
    params = yaml.safe_load((built_clone / "params.yaml").read_text())
    params["data_split"]["seed"] += 1
    (built_clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run_cli(["dvc", "repro", "merge_data"], built_clone, check=True)
    # the replay stage reads the training splits' prompts
    assert stages_run(rerun.stdout) == {"data_split", "generate_replay_data", "merge_data"}


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_import_url_brings_a_raw_file_the_stage_reads(clone, http_server):
    www, base = http_server
    shutil.copy(ROOT / repo_params()["datasets"]["orca"]["path"], www / "1M-GPT4-Augmented.parquet")
    target = "data/raw/1M-GPT4-Augmented.parquet"
    run_cli(["dvc", "import-url", f"{base}/1M-GPT4-Augmented.parquet", target], clone, check=True)
    dvcfile = yaml.safe_load((clone / f"{target}.dvc").read_text())
    assert dvcfile["deps"][0]["path"] == f"{base}/1M-GPT4-Augmented.parquet"
    assert (clone / target).read_bytes() == (www / "1M-GPT4-Augmented.parquet").read_bytes()

    run_cli(["dvc", "exp", "run", "process_data", "-S", f"datasets.orca.path={target}",
             "-S", "datasets.orca.subset_rows=50"], clone, check=True)
    metrics = json.loads((clone / PATHS["metrics_dir"] / "process_data.json").read_text())["orca"]
    assert metrics["rows_in"] == 50
    assert len(list(read_jsonl(clone / PATHS["processed_dir"] / "orca.jsonl"))) == metrics["rows_out"] > 40


def test_default_remote_round_trips_outputs(built_clone):
    """The committed local remote works out of the box: push, lose cache and outputs, pull back."""
    train = built_clone / PATHS["train"]
    before = train.read_bytes()
    home = {"HOME": str(built_clone.parent / "home")}  # the remote is ~/dvc-storage
    run_cli(["dvc", "push"], built_clone, check=True, env=home)
    assert any((built_clone.parent / "home/dvc-storage/files/md5").rglob("*"))
    shutil.rmtree(built_clone / ".dvc" / "cache")
    train.unlink()
    run_cli(["dvc", "pull", "merge_data"], built_clone, check=True, env=home)
    assert train.read_bytes() == before
