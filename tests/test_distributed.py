"""Data-parallel training under torchrun on CPU: 2 processes over gloo with one packed row each,
against one process with 2 rows per step (the same global batch). The train stage runs
unchanged; the loss curves and the adapters match, and only the main process writes outputs.

LoRA dropout is off here: each process draws its own dropout masks, so with dropout the two
runs would take different (equally valid) steps."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.cloudkit import free_port
from tests.conftest import make_clone, run_cli
from tests.modelkit import TINY_DAG_SFT, chatml_tokenizer, configure_tiny_dag, tiny_model_folder

pytestmark = pytest.mark.timeout(600)  # a collective that never completes fails the test, not CI


def losses(live: Path) -> list[float]:
    with (live / "plots/metrics/train/loss.tsv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def train(repo: Path, name: str, batch: int, processes: int):
    """The train stage's command, as one process or under torchrun, writing under ``name``."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["paths"]["train_live"] = f"out/{name}/live"
    params["paths"]["adapter"] = f"out/{name}/adapter"
    params["paths"]["checkpoints"] = f"out/{name}/checkpoints"
    params["train"]["sft"]["per_device_train_batch_size"] = batch
    params["train"]["lora"]["lora_dropout"] = 0.0
    params["train"]["sft"]["packing"] = True  # whole rows per process: no padding to tell the runs apart
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
                "--master_port", str(free_port())] if processes > 1 else [sys.executable]
    return run_cli([*launcher, "-m", "src.stages.train"], repo, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    model = tiny_model_folder(tmp / "tiny", chatml_tokenizer())
    repo = configure_tiny_dag(make_clone(tmp / "repo"), model)
    run_cli(["dvc", "repro", "merge_data", "fetch_base_model"], repo, check=True)
    single = train(repo, "single", batch=2, processes=1)
    ddp = train(repo, "ddp", batch=1, processes=2)
    return repo, single, ddp


def test_two_process_ddp_matches_one_process_of_the_same_global_batch(runs):
    repo, single, ddp = runs
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = losses(repo / "out/single/live"), losses(repo / "out/ddp/live")
    assert len(one) == len(two) == TINY_DAG_SFT["max_steps"]
    assert two == pytest.approx(one, rel=1e-5), list(zip(one, two))
    assert one[-1] < one[0]  # it learned something, so matching curves mean matching updates
    from safetensors.torch import load_file

    a, b = (load_file(repo / f"out/{n}/adapter/adapter_model.safetensors") for n in ("single", "ddp"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


def test_ddp_writes_its_outputs_once(runs):
    repo, _, ddp = runs
    assert ddp.stderr.count("wrote out/ddp/adapter") == 1  # the main process only
    metrics = json.loads((repo / "out/ddp/live/metrics.json").read_text())
    assert metrics["steps"] == TINY_DAG_SFT["max_steps"]
    assert (repo / "out/ddp/adapter/adapter_model.safetensors").is_file()
    assert not list((repo / "out/ddp/checkpoints").glob("*/checkpoint-*"))  # spent after success
