"""More than one process: the train stage under ``accelerate launch``.

``train.distributed`` in params.yaml picks an accelerate config in ``src/accelerate/``
(``ddp``: data parallel; ``fsdp``: sharded, for a model that does not fit one GPU). When it
is set and the stage was started as a plain ``python -m src.stages.train`` (as dvc.yaml does),
the stage starts itself again under ``accelerate launch`` with one process per GPU of every
machine of the job:

- GPUs per machine: ``TRAIN_PROCESSES_PER_NODE`` when set, else ``SKYPILOT_NUM_GPUS_PER_NODE``,
  else the GPUs this machine sees (``CUDA_VISIBLE_DEVICES`` narrows them).
- Machines: SkyPilot's ``SKYPILOT_NUM_NODES``, ``SKYPILOT_NODE_RANK`` and ``SKYPILOT_NODE_IPS``
  (the first address is the main machine's), so ``sky jobs launch --num-nodes N`` needs
  nothing more; the main machine listens on ``TRAIN_MAIN_PORT`` (29500).

A stage already started by a launcher (``torchrun`` or ``accelerate launch``, which set
``LOCAL_RANK``) runs as it was started, whatever ``train.distributed`` says.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from src.errors import PipelineError

CONFIGS = Path(__file__).resolve().parent / "accelerate"
DEFAULT_PORT = 29500


def _count(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise PipelineError(f"{name}={value!r}: must be a whole number of at least 1")
    return int(value)


def launch_command(kind: str, env: Mapping[str, str], gpus: int, module: str = "src.stages.train") -> list[str]:
    """The ``accelerate launch`` command line that runs ``module`` with config ``kind`` over
    this job's machines and GPUs (``gpus``: the GPUs this machine sees)."""
    per_node = _count(env, "TRAIN_PROCESSES_PER_NODE") or _count(env, "SKYPILOT_NUM_GPUS_PER_NODE") or gpus
    if not per_node:
        raise PipelineError(f"train.distributed is {kind} but this machine has no GPU; set it to none, "
                            "or TRAIN_PROCESSES_PER_NODE to run that many CPU processes")
    nodes = _count(env, "SKYPILOT_NUM_NODES") or 1
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{kind}.yaml"),
               "--num_processes", str(per_node * nodes)]  # accelerate wants the total over all machines
    if nodes > 1:
        if kind == "fsdp":
            raise PipelineError("train.distributed fsdp runs on one machine here (its adapter is gathered on the "
                                "main process only); use ddp across machines")
        ips = env.get("SKYPILOT_NODE_IPS", "").split()
        rank = env.get("SKYPILOT_NODE_RANK", "")
        if len(ips) != nodes or not rank.isdigit() or int(rank) >= nodes:
            raise PipelineError(f"SKYPILOT_NUM_NODES is {nodes} but SKYPILOT_NODE_IPS lists {len(ips)} addresses "
                                f"and SKYPILOT_NODE_RANK is {rank!r}")
        command += ["--num_machines", str(nodes), "--machine_rank", rank, "--main_process_ip", ips[0],
                    "--main_process_port", str(_count(env, "TRAIN_MAIN_PORT") or DEFAULT_PORT)]
    return [*command, "-m", module]


def relaunch_if_needed(kind: str, module: str = "src.stages.train") -> None:
    """Replace this process with ``accelerate launch`` over the job's GPUs when ``kind`` is not
    ``none`` and no launcher started it; return otherwise."""
    if kind == "none" or "LOCAL_RANK" in os.environ:
        return
    import logging

    import torch

    gpus = torch.cuda.device_count()
    command = launch_command(kind, os.environ, gpus, module)
    env = dict(os.environ)
    if not gpus:
        # Without this, accelerate gives each CPU process a run of its own: no data sharding, no
        # gradient exchange, and no error.
        env["ACCELERATE_USE_CPU"] = "1"
    logging.getLogger(__name__).info("train.distributed is %s: %s", kind, " ".join(command[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
