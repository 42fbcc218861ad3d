"""Resumable training on a tiny random Llama (seconds per run).

A run stopped at a step resumes from its newest complete checkpoint and ends with the
same adapter as a run that was never stopped; half-written checkpoints and checkpoints of
another configuration are never used. (SIGKILL under ``dvc repro``: test_faults.py.)
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from src import checkpoints, files
from src.checkpoints import CheckpointStore
from src.stages import train
from tests.modelkit import KL_REPLAY, QLORA, add_replay_records, prepared

SFT = {"max_steps": 9, "save_steps": 3, "save_total_limit": 2, "eval_steps": 4, "logging_steps": 1,
       "learning_rate": 5.0e-3}


class Stop(Exception):
    """Raised from inside training to stop it as a crash would."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = prepared(tmp_path_factory.mktemp("resume"), sft=SFT, train=KL_REPLAY)
    add_replay_records(cfg, 5)  # distilled beside the batches: the rows a step takes must resume too
    reference = train.main(cfg)
    return cfg, adapter_weights(cfg), reference.state.log_history


def adapter_weights(cfg) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(cfg.paths.adapter) / "adapter_model.safetensors")


def stop_at(monkeypatch, step: int) -> None:
    """Make training raise Stop once the optimizer has taken ``step`` steps (after any save)."""
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step >= step:
            raise Stop(step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


def stopped_run(cfg, monkeypatch, step: int) -> tuple[Path, Path]:
    """Train until ``step`` and stop there; return the checkpoint root and the run's folder in it."""
    with monkeypatch.context() as m:
        stop_at(m, step)
        with pytest.raises(Stop):
            train.main(cfg)
    root = Path(cfg.paths.checkpoints)
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return root, folder


def test_stopped_run_resumes_to_the_same_adapter(setup, monkeypatch, caplog):
    cfg, reference, reference_history = setup
    root, folder = stopped_run(cfg, monkeypatch, 7)
    # pruned to save_total_limit 2 of the checkpoints at steps 3 and 6
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(folder.rglob("*.bin"))  # no pickled training arguments
    with caplog.at_level(logging.INFO):
        trainer = train.main(cfg)
    assert f"resuming from {folder / 'checkpoint-6'} (step 6)" in caplog.text
    assert trainer.state.global_step == 9
    resumed = adapter_weights(cfg)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (resumed[name] - tensor).abs().max().item() <= 1e-6, name
    # the dvclive series are whole: the checkpoint's history first, then the resumed steps
    live = Path(cfg.paths.train_live)
    with (live / "plots/metrics/train/loss.tsv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]
    assert steps == list(range(1, 10))
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 6 and metrics["steps"] == 9
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == pytest.approx([h["loss"] for h in reference_history if "loss" in h], abs=1e-5)
    assert not root.joinpath(folder.name).exists()  # spent once the adapter is saved


def test_kept_checkpoints_let_a_rerun_skip_finished_training(setup, monkeypatch, caplog):
    """TRAIN_KEEP_CHECKPOINTS (set by sky-training.yaml): a machine that replaces one preempted
    after training, but before the results were pushed, trains no step again."""
    cfg, reference, _ = setup
    monkeypatch.setenv(checkpoints.KEEP_ENV_VAR, "1")
    root = Path(cfg.paths.checkpoints)
    try:
        train.main(cfg)
        (folder,) = [p for p in root.iterdir() if p.is_dir()]
        assert (folder / "checkpoint-9" / checkpoints.MANIFEST_FILE).is_file()  # the final step's
        Path(cfg.paths.adapter, "adapter_model.safetensors").unlink()
        with caplog.at_level(logging.INFO):
            trainer = train.main(cfg)
        assert f"resuming from {folder / 'checkpoint-9'} (step 9)" in caplog.text
        assert trainer.state.global_step == 9 and not [h for h in trainer.state.log_history[-1:] if "loss" in h]
        resumed = adapter_weights(cfg)
        assert all((resumed[k] - v).abs().max().item() <= 1e-6 for k, v in reference.items())
        live = Path(cfg.paths.train_live)
        metrics = json.loads((live / "metrics.json").read_text())
        assert metrics["resumed_from_step"] == 9 and metrics["steps"] == 9 and metrics["eval_loss"] > 0
        with (live / "plots/metrics/train/loss.tsv").open() as f:  # the series replayed whole
            assert [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")] == list(range(1, 10))
    finally:
        for folder in root.iterdir():
            shutil.rmtree(folder)


def test_a_spent_budget_ends_training_at_the_checkpoint_it_just_saved(setup, monkeypatch, tmp_path):
    """A cloud job whose attempts have spent $2 of a $1.50 budget (src/cloud/cost.py's record):
    training stops after its first checkpoint (step 3 of 9), and the adapter it saves is that
    checkpoint's, not the finished run's."""
    from safetensors.torch import load_file

    cfg, reference, _ = setup
    now = time.time()
    record = tmp_path / "cost.json"
    record.write_text(json.dumps({"attempts": [{"price_per_hour": 1.0, "nodes": 1, "gpus_per_node": 1,
                                                "started": now - 7200, "last_seen": now - 7200}]}))
    monkeypatch.setenv("TRAIN_COST_RECORD", str(record))
    monkeypatch.setenv("TRAIN_MAX_COST_USD", "1.5")
    monkeypatch.setenv(checkpoints.KEEP_ENV_VAR, "1")
    root = Path(cfg.paths.checkpoints)
    try:
        trainer = train.main(cfg)
        assert trainer.state.global_step == 3
        stop = json.loads((tmp_path / "budget.json").read_text())["stop"]
        assert (stop["step"], stop["max_steps"], stop["max_cost_usd"]) == (3, 9, 1.5) and stop["spent_usd"] >= 2
        (folder,) = [p for p in root.iterdir() if p.is_dir()]
        saved = load_file(next((folder / "checkpoint-3").rglob("adapter_model.safetensors")))
        stopped = adapter_weights(cfg)
        assert all(torch_equal(stopped[k], v) for k, v in saved.items())
        assert any((stopped[k] - v).abs().max().item() > 1e-4 for k, v in reference.items())
        assert json.loads((Path(cfg.paths.train_live) / "metrics.json").read_text())["steps"] == 3
    finally:
        for folder in root.iterdir():
            shutil.rmtree(folder)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-6


def test_half_written_and_foreign_checkpoints_are_not_used(setup, monkeypatch, caplog):
    cfg, reference, _ = setup
    root, folder = stopped_run(cfg, monkeypatch, 4)
    # a checkpoint renamed into place whose file is short (a copy cut off on a bucket mount)
    done = folder / "checkpoint-3"
    manifest = json.loads((done / checkpoints.MANIFEST_FILE).read_text())
    fake = folder / "checkpoint-5"
    fake.mkdir()
    (fake / checkpoints.MANIFEST_FILE).write_text(json.dumps(manifest))
    for name in manifest["files"]:
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_bytes(b"x")
    # a staging folder left by a kill during a write, and another configuration's folder
    (folder / ".staging/checkpoint-6").mkdir(parents=True)
    other = root / "0123456789abcdef"
    other.mkdir()
    theirs = json.loads((folder / checkpoints.FINGERPRINT_FILE).read_text())
    theirs["params"]["train"]["sft"]["learning_rate"] = 1.0e-4
    (other / checkpoints.FINGERPRINT_FILE).write_text(json.dumps(theirs))
    with caplog.at_level(logging.INFO):
        train.main(cfg)
    assert f"removing {folder / '.staging'}: a checkpoint whose writing was interrupted" in caplog.text
    assert f"ignoring {fake}: incomplete" in caplog.text
    assert (f"ignoring checkpoints in {other}: another configuration "
            "(params.train.sft.learning_rate: 0.0001 -> 0.005)") in caplog.text
    assert f"resuming from {done} (step 3)" in caplog.text
    resumed = adapter_weights(cfg)
    assert all((resumed[k] - v).abs().max().item() <= 1e-6 for k, v in reference.items())
    assert other.exists()  # another configuration's checkpoints are left alone


def test_changed_data_gets_a_new_fingerprint(setup, tmp_path):
    cfg, _, _ = setup
    inputs = checkpoints.fingerprint_inputs(cfg.model_dump(include={"chat", "train"}),
                                            {"train": cfg.paths.train}, cfg.paths.base_model)
    copy = tmp_path / "train.jsonl"
    copy.write_text(Path(cfg.paths.train).read_text() + "\n")
    changed = checkpoints.fingerprint_inputs(cfg.model_dump(include={"chat", "train"}),
                                             {"train": str(copy)}, cfg.paths.base_model)
    assert checkpoints.fingerprint_id(inputs) != checkpoints.fingerprint_id(changed)
    assert checkpoints.differences(changed, inputs) == "data.train changed"
    # settings that only change logging or checkpointing keep the fingerprint
    params = cfg.model_dump(include={"chat", "train"})
    params["train"]["sft"] = {**params["train"]["sft"], "save_steps": 1, "logging_steps": 7}
    same = checkpoints.fingerprint_inputs(params, {"train": cfg.paths.train}, cfg.paths.base_model)
    assert checkpoints.fingerprint_id(same) == checkpoints.fingerprint_id(inputs)


def test_checkpoint_root_from_the_environment(monkeypatch, tmp_path):
    assert checkpoints.checkpoint_root("models/checkpoints") == Path("models/checkpoints")
    monkeypatch.setenv("TRAIN_CHECKPOINT_DIR", str(tmp_path / "bucket"))
    assert checkpoints.checkpoint_root("models/checkpoints") == tmp_path / "bucket"


def test_weights_are_hashed_by_size_head_and_tail_data_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "WHOLE_HASH_LIMIT", 64)
    monkeypatch.setattr(files, "SAMPLE_BYTES", 16)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(bytes(range(200)))
    sampled, whole = files.file_digest(path, sampled=True), files.file_digest(path)
    path.write_bytes(bytes(range(199)) + b"\xff")  # the tail changes: both see it
    assert files.file_digest(path, sampled=True) != sampled and files.file_digest(path) != whole
    sampled, whole = files.file_digest(path, sampled=True), files.file_digest(path)
    path.write_bytes(bytes(range(100)) + b"\xfe" + bytes(range(101, 199)) + b"\xff")
    # a change in the middle: a whole hash (data files) sees it; a sample (weights) does not
    assert files.file_digest(path) != whole and files.file_digest(path, sampled=True) == sampled


def test_unwritable_checkpoint_root_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = CheckpointStore(blocker / "checkpoints", {"params": {}}, keep=2)
    with pytest.raises(Exception) as err:
        store.prepare()
    assert str(blocker / "checkpoints") in str(err.value) and "TRAIN_CHECKPOINT_DIR" in str(err.value)


HOLDER = """
import sys, time
from pathlib import Path
from src.checkpoints import CheckpointStore
store = CheckpointStore(Path(sys.argv[1]), {"params": {"lr": 1}}, keep=2)
store.prepare()
(store.staging / "checkpoint-3").mkdir(parents=True)
print("held", flush=True)
time.sleep(120)
"""


def test_two_runs_of_one_configuration_cannot_share_its_folder(tmp_path):
    """Another process trains this configuration in the same root: the second run stops with one
    line naming the holder and touches nothing; once the holder dies (SIGKILL), the lock is gone."""
    import os
    import subprocess
    import sys

    from src.errors import PipelineError
    from tests.conftest import ROOT

    root = tmp_path / "checkpoints"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = CheckpointStore(root, {"params": {"lr": 1}}, keep=2)
        with pytest.raises(PipelineError) as err:
            second.prepare()
        assert str(err.value) == (f"{second.dir}: another run of this configuration is training here (pid "
                                  f"{holder.pid} on {os.uname().nodename}); wait for it to end, or give this "
                                  "run its own TRAIN_CHECKPOINT_DIR")
        assert (second.staging / "checkpoint-3").is_dir()  # the holder's staging left alone
        other = CheckpointStore(root, {"params": {"lr": 2}}, keep=2)  # another configuration: its own folder
        other.prepare()
        other.release()
    finally:
        holder.kill()
        holder.wait()
    second.prepare()  # the killed holder left no lock: this run takes over, tidying its staging
    assert not second.staging.exists()
    second.release()


def test_stopped_qlora_run_resumes_to_the_same_adapter(tmp_path, monkeypatch):
    """TRL keeps QLoRA adapters in bfloat16 while PEFT loads a checkpoint's adapter in float32;
    the resumed run must go on in the run's own dtype to end where the uninterrupted one does."""
    _, cfg = prepared(tmp_path, sft={**SFT, "max_steps": 8}, train={"quantization": QLORA})
    reference_trainer = train.main(cfg)
    reference = adapter_weights(cfg)
    assert {str(t.dtype) for t in reference.values()} == {"torch.bfloat16"}
    stopped_run(cfg, monkeypatch, 5)
    trainer = train.main(cfg)
    resumed = adapter_weights(cfg)
    for name, tensor in reference.items():
        assert (resumed[name].float() - tensor.float()).abs().max().item() <= 1e-6, name
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h] == \
        [h["loss"] for h in reference_trainer.state.log_history if "loss" in h]
