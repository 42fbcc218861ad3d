"""Data-parallel training on CPU over gloo, against one process of the same global batch:
2 processes under torchrun with one packed row each, and ``train.distributed: ddp`` on two
simulated machines (the stage relaunching itself through accelerate with SkyPilot's node
variables) against one process with 2 rows per step. The train stage runs unchanged; the loss
curves and the adapters match, and one process per machine writes outputs. Also: the command
lines accelerate would hand to torchrun for SkyPilot's variables and for both configs.

LoRA dropout is off here: each process draws its own dropout masks, so with dropout the two
runs would take different (equally valid) steps."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cloudkit import free_port
from tests.conftest import InThreads, cli_env, head_start, make_clone, run_cli, set_output_paths
from tests.modelkit import TINY_DAG_SFT, configure_tiny_dag

# A collective that never completes fails the test, not CI: each run is killed past RUN_LIMIT
# seconds (one took 40 s on 2 cores with bf16 beside the session's other work), and the tests
# that wait for the runs give up past the module's limit.
RUN_LIMIT = 600
pytestmark = pytest.mark.timeout(1200)


def losses(live: Path) -> list[float]:
    with (live / "plots/metrics/train/loss.tsv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")]


def configure(repo: Path, name: str, batch: int, distributed: str = "none") -> None:
    """Params for a run writing under ``models/out/<name>``: packed rows of ``batch`` per process, no dropout."""
    set_output_paths(repo, train_live=f"models/out/{name}/live", adapter=f"models/out/{name}/adapter",
                     checkpoints=f"models/out/{name}/checkpoints")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["sft"]["per_device_train_batch_size"] = batch
    params["train"]["lora"]["lora_dropout"] = 0.0
    params["train"]["sft"]["packing"] = True  # whole rows per process: no padding to tell the runs apart
    params["train"]["distributed"] = distributed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def train(repo: Path, name: str, batch: int, processes: int):
    """The train stage's command, as one process or under torchrun, writing under ``name``."""
    configure(repo, name, batch)
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes),
                "--master_port", str(free_port())] if processes > 1 else [sys.executable]
    return run_cli([*launcher, "-m", "src.stages.train"], repo, env={"OMP_NUM_THREADS": "1"}, timeout=RUN_LIMIT)


def two_machines(repo: Path, tmp: Path) -> list[subprocess.CompletedProcess]:
    """The stage as dvc.yaml runs it (``python -m src.stages.train``) with ``train.distributed: ddp``
    on two "machines" of one process each, as SkyPilot describes them: two copies of the
    repository on localhost, checkpoints in one shared folder (the mounted bucket)."""
    machines = [repo, tmp / "machine-1"]
    shutil.copytree(repo, machines[1])
    port = free_port()
    procs = []
    for rank, machine in enumerate(machines):
        configure(machine, "machines", batch=1, distributed="ddp")
        env = cli_env({"OMP_NUM_THREADS": "1", "TRAIN_PROCESSES_PER_NODE": "1", "SKYPILOT_NUM_NODES": "2",
                       "SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
                       "TRAIN_MAIN_PORT": str(port), "TRAIN_CHECKPOINT_DIR": str(tmp / "bucket")})
        procs.append(subprocess.Popen([sys.executable, "-m", "src.stages.train"], cwd=machine, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=RUN_LIMIT) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs)]


def ddp_chain(tmp: Path, model: Path):
    repo = configure_tiny_dag(make_clone(tmp / "repo"), model)
    run_cli(["dvc", "repro", "merge_data", "fetch_base_model"], repo, check=True)
    single = train(repo, "single", batch=2, processes=1)
    ddp = train(repo, "ddp", batch=1, processes=2)
    machines = two_machines(repo, tmp)
    return repo, single, ddp, (tmp / "machine-1", machines)


@head_start("ddp_runs")
def start_ddp_runs(request, tmp_path_factory) -> InThreads:
    """The runs above, one after another in a thread started as the session starts (conftest:
    head_started), beside the other tests."""
    model, tmp = request.getfixturevalue("tiny_model"), tmp_path_factory.mktemp("ddp")
    return InThreads(runs=lambda: ddp_chain(tmp, model))


@pytest.fixture(scope="module")
def runs(ddp_runs):
    return ddp_runs.result("runs")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_of_the_same_global_batch(runs):
    repo, single, ddp, _ = runs
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = losses(repo / "models/out/single/live"), losses(repo / "models/out/ddp/live")
    assert len(one) == len(two) == TINY_DAG_SFT["max_steps"]
    assert two == pytest.approx(one, rel=1e-5), list(zip(one, two))
    assert one[-1] < one[0]  # it learned something, so matching curves mean matching updates
    from safetensors.torch import load_file

    a, b = (load_file(repo / f"models/out/{n}/adapter/adapter_model.safetensors") for n in ("single", "ddp"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


@pytest.mark.slow
def test_ddp_writes_its_outputs_once(runs):
    repo, _, ddp, _ = runs
    assert ddp.stderr.count("wrote models/out/ddp/adapter") == 1  # the main process only
    metrics = json.loads((repo / "models/out/ddp/live/metrics.json").read_text())
    assert metrics["steps"] == TINY_DAG_SFT["max_steps"]
    assert (repo / "models/out/ddp/adapter/adapter_model.safetensors").is_file()
    assert not list((repo / "models/out/ddp/checkpoints").glob("*/checkpoint-*"))  # spent after success


@pytest.mark.slow
def test_two_machines_through_accelerate_match_one_process(runs):
    """train.distributed ddp with SkyPilot's node variables: the stage starts itself under
    accelerate launch, the machines meet at the first one's address, and each machine writes
    the outputs its own DVC checks; the loss curve is the one-process run's."""
    repo, single, _, (machine_1, (first, second)) = runs
    for proc in (first, second):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "train.distributed is ddp: -m accelerate.commands.launch" in proc.stderr
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 127.0.0.1" in second.stderr
    one = losses(repo / "models/out/single/live")
    for machine in (repo, machine_1):
        assert losses(machine / "models/out/machines/live") == pytest.approx(one, rel=1e-5)
    from safetensors.torch import load_file

    a, b, c = (load_file(m / f"models/out/{n}/adapter/adapter_model.safetensors")
               for m, n in ((repo, "single"), (repo, "machines"), (machine_1, "machines")))
    assert max((b[k] - c[k]).abs().max().item() for k in b) == 0  # the same weights on both machines
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4
    single_metrics = json.loads((repo / "models/out/single/live/metrics.json").read_text())
    for machine in (repo, machine_1):
        metrics = json.loads((machine / "models/out/machines/live/metrics.json").read_text())
        assert metrics["records_trained"] == single_metrics["records_trained"]  # the training set, counted once
        assert metrics["steps"] == TINY_DAG_SFT["max_steps"]
    assert not list((machine_1.parent / "bucket").glob("*/checkpoint-*"))  # spent after success


def handed_to_torchrun(command: list[str], monkeypatch) -> dict:
    """What ``accelerate launch`` (the command's arguments after the module name) would hand to
    torchrun, and the environment it would set, without starting anything."""
    import accelerate.commands.launch as launch
    import accelerate.utils.launch as launch_utils
    import torch.distributed.run as distrib_run

    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    seen = {}
    monkeypatch.setattr(launch_utils, "is_port_in_use", lambda port: False)
    monkeypatch.setattr(distrib_run, "run", lambda args: seen.update(vars(args), env=dict(os.environ)))
    launch.launch_command(launch.launch_command_parser().parse_args(command[3:]))
    return seen


SKY_NODE_1 = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NUM_GPUS_PER_NODE": "4",
              "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}


def test_launch_over_skypilot_nodes(monkeypatch):
    from src.distributed import launch_command

    seen = handed_to_torchrun(launch_command("ddp", SKY_NODE_1, gpus=4), monkeypatch)
    assert (seen["nnodes"], seen["nproc_per_node"], seen["node_rank"]) == ("2", "4", 1)
    assert seen["rdzv_endpoint"] == "10.0.0.1:29500" and seen["rdzv_backend"] == "static"
    assert seen["module"] and seen["training_script"] == "src.stages.train"
    assert seen["env"].get("ACCELERATE_USE_FSDP", "false") == "false"


def test_launch_on_one_machine_uses_its_gpus_and_fsdp_config(monkeypatch):
    from src.distributed import launch_command

    seen = handed_to_torchrun(launch_command("fsdp", {}, gpus=8), monkeypatch)
    assert (seen["nnodes"], seen["nproc_per_node"]) == ("1:1", "8")
    env = seen["env"]
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert (env["FSDP_SHARDING_STRATEGY"], env["FSDP_AUTO_WRAP_POLICY"]) == ("FULL_SHARD", "TRANSFORMER_BASED_WRAP")
    assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    narrowed = handed_to_torchrun(launch_command("ddp", {"TRAIN_PROCESSES_PER_NODE": "2"}, gpus=8), monkeypatch)
    assert narrowed["nproc_per_node"] == "2"


@pytest.mark.parametrize("kind, env, gpus, message", [
    ("ddp", {}, 0, "this machine has no GPU"),
    ("ddp", {**SKY_NODE_1, "SKYPILOT_NODE_IPS": "10.0.0.1"}, 4, "SKYPILOT_NODE_IPS lists 1 addresses"),
    ("ddp", {"TRAIN_PROCESSES_PER_NODE": "two"}, 4, "TRAIN_PROCESSES_PER_NODE='two'"),
    ("fsdp", SKY_NODE_1, 4, "use ddp across machines"),
])
def test_launch_refuses_what_it_cannot_run(kind, env, gpus, message):
    from src.distributed import launch_command
    from src.errors import PipelineError

    with pytest.raises(PipelineError, match=message):
        launch_command(kind, env, gpus)


@pytest.mark.parametrize("env, device_map", [
    ({}, {"": 0}),                                      # one process: the first GPU
    ({"LOCAL_RANK": "3"}, {"": 3}),                     # a launcher's fourth process on this machine
    ({"LOCAL_RANK": "1", "ACCELERATE_USE_FSDP": "true"}, None),  # FSDP places the shards itself
])
def test_each_process_loads_the_model_onto_its_own_gpu(tmp_path, monkeypatch, env, device_map):
    import transformers

    from src import modeling

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    for name in ("LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = {}
    monkeypatch.setattr(modeling, "device_kind", lambda: "cuda")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kwargs: seen.update(kwargs))
    modeling.load_model(tmp_path, "bfloat16", {"load_in_4bit": True})
    assert seen.get("device_map") == device_map
    assert seen["quantization_config"].load_in_4bit
