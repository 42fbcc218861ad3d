"""What a cloud run costs: the machine and its catalog price, every attempt's wall time (the
preempted ones too), and a budget that ends the run before it passes.

    python -m src.cloud.cost start RECORD [--budget USD]   # each machine, before the run
    python -m src.cloud.cost beat RECORD [--every 60]       # beside the run: this attempt's time
    python -m src.cloud.cost finish RECORD --experiment NAME   # after the run: the experiment's metrics
    python -m src.cloud.cost check                          # last: fails if the budget cut training

RECORD is a JSON file in the job's checkpoint folder, which outlives its machines: one entry per
attempt (a machine that ran the job), with the cloud, region, zone, instance type, spot or
on-demand, the hourly price SkyPilot's catalog gives for them at the attempt's start, when the
attempt started (its setup, written by sky-training.yaml) and when it was last seen (``beat``
rewrites it every minute, so a preempted attempt counts up to its last beat). ``finish`` writes
``cost_usd`` (the sum over attempts of hours x price x machines) and ``gpu_hours`` to the
experiment's metrics (``paths.cloud_cost``).

The machine: ``SKYPILOT_CLUSTER_INFO`` gives cloud, region and zone; the instance type and
whether it is spot come from the cloud's metadata service (AWS, GCP, Azure), or from the
``INSTANCE_TYPE`` and ``USE_SPOT`` variables where a cloud has none (``--env`` at launch).

The budget (``max_cost_usd``: the profile's, or ``MAX_COST_USD``): an attempt does not start
when what was spent plus one checkpoint interval would pass it, and training (``src.budget.BudgetStop``,
after each checkpoint) stops at the checkpoint it just saved when the next interval would. The
stages after training then run on that adapter, the experiment is pushed, and ``check`` ends
the job with one line. Their own time is not in the projection: leave room for evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from src.budget import budget_state, hours, rate, read_record, spent
from src.cli import one_line_errors
from src.cloud.push import experiment_ref
from src.config import output_paths
from src.errors import PipelineError
from src.files import read_json, write_json

log = logging.getLogger(__name__)

SETUP_MARK = ".finetune-setup-started"  # in $HOME: the epoch second the YAML's setup began
METADATA_TIMEOUT = 2.0


# --- the machine --------------------------------------------------------------------------

def _get(url: str, headers: dict[str, str], method: str = "GET") -> str:
    request = urllib.request.Request(url, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT) as response:
        return response.read().decode().strip()


def aws_instance() -> tuple[str, bool]:
    """(instance type, spot) from EC2's metadata service (IMDSv2)."""
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
    token = _get(f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, "PUT")
    ask = {"X-aws-ec2-metadata-token": token}
    return (_get(f"{base}/latest/meta-data/instance-type", ask),
            _get(f"{base}/latest/meta-data/instance-life-cycle", ask) == "spot")


def gcp_instance() -> tuple[str, bool]:
    """(machine type, spot or preemptible) from Compute Engine's metadata server."""
    base = f"http://{os.environ.get('GCE_METADATA_HOST', 'metadata.google.internal')}/computeMetadata/v1/instance"
    ask = {"Metadata-Flavor": "Google"}
    model = _get(f"{base}/scheduling/provisioning-model", ask)
    return _get(f"{base}/machine-type", ask).rsplit("/", 1)[-1], model.upper() == "SPOT" or \
        _get(f"{base}/scheduling/preemptible", ask).upper() == "TRUE"


def azure_instance() -> tuple[str, bool]:
    """(VM size, spot) from Azure's instance metadata service."""
    base = os.environ.get("AZURE_METADATA_ENDPOINT", "http://169.254.169.254").rstrip("/")
    compute = json.loads(_get(f"{base}/metadata/instance/compute?api-version=2021-02-01", {"Metadata": "true"}))
    return compute["vmSize"], compute.get("priority", "").lower() == "spot"


METADATA = {"aws": aws_instance, "gcp": gcp_instance, "azure": azure_instance}


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise PipelineError(f"{name}={value!r}: true or false")


def this_machine() -> dict:
    """Cloud, region, zone, instance type, spot, machines and GPUs per machine of this job."""
    info = json.loads(os.environ.get("SKYPILOT_CLUSTER_INFO") or "{}")
    cloud = str(info.get("cloud") or "").lower()
    if not cloud:
        raise PipelineError("SKYPILOT_CLUSTER_INFO is not set: not a SkyPilot machine, no cost to record")
    instance, spot = os.environ.get("INSTANCE_TYPE") or None, os.environ.get("USE_SPOT") or None
    if instance is None or spot is None:
        if cloud not in METADATA:
            raise PipelineError(f"{cloud}: no metadata service known here; launch with --env INSTANCE_TYPE=... "
                                "--env USE_SPOT=true|false to record the cost")
        try:
            found = METADATA[cloud]()
        except (OSError, ValueError, KeyError) as err:
            raise PipelineError(f"{cloud} metadata service: {type(err).__name__}: {' '.join(str(err).split())}; "
                                "launch with --env INSTANCE_TYPE=... --env USE_SPOT=true|false") from err
        instance = instance or found[0]
        spot = found[1] if spot is None else spot
    return {"cloud": cloud, "region": info.get("region"), "zone": info.get("zone"), "instance_type": instance,
            "spot": spot if isinstance(spot, bool) else _flag(spot, "USE_SPOT"),
            "nodes": int(os.environ.get("SKYPILOT_NUM_NODES") or 1),
            "gpus_per_node": int(os.environ.get("SKYPILOT_NUM_GPUS_PER_NODE") or 0)}


def catalog_price(machine: dict) -> float:
    """The hourly price of one such machine in SkyPilot's catalog (its zone's, else its region's)."""
    from sky import catalog

    where = (machine["region"], machine["zone"])
    try:
        price = catalog.get_hourly_cost(machine["instance_type"], machine["spot"], *where, clouds=machine["cloud"])
        return float(price)
    except Exception as err:  # not in the catalog, or the catalog out of reach: one line
        raise PipelineError(f"{machine['cloud']} {machine['instance_type']} in {'/'.join(filter(None, where))}: "
                            f"no price in SkyPilot's catalog ({' '.join(str(err).split())[:200]})") from err


# --- the attempts ------------------------------------------------------------------------

def start(record_path: Path, budget: float | None) -> dict:
    """Add this machine's attempt to the record (refusing it when the budget would pass)."""
    machine = this_machine()
    price = catalog_price(machine)
    mark = Path.home() / SETUP_MARK
    now = time.time()
    started = float(mark.read_text().strip()) if mark.exists() else now
    mark.unlink(missing_ok=True)  # one attempt per setup
    record = read_record(record_path)
    attempt = {**machine, "price_per_hour": price, "started": started, "last_seen": now}
    attempts = [*record["attempts"], attempt]
    usd, _ = spent(attempts)
    log.info("attempt %d: %s %s %s (%s) at $%.4f/h x %d; spent so far $%.2f%s", len(attempts), machine["cloud"],
             machine["zone"] or machine["region"], machine["instance_type"], "spot" if machine["spot"] else "on-demand",
             price, machine["nodes"], usd, f" of ${budget:.2f}" if budget is not None else "")
    if budget is not None:
        interval = budget_state(record_path).get("interval_seconds", 0.0)
        if usd + interval * rate(attempt) > budget:
            raise PipelineError(
                f"budget: ${usd:.2f} spent over {len(attempts)} attempt(s); "
                + (f"one more checkpoint interval ({interval:.0f} s) " if interval else "")
                + f"would pass max_cost_usd ${budget:.2f}. Nothing more is run; the checkpoints stay in "
                  f"{record_path.parent} (launch again with a larger MAX_COST_USD and the same EXP_NAME to go on)")
    write_json(record_path, {**record, "attempts": attempts, "max_cost_usd": budget}, sync=True)
    return attempt


def beat(record_path: Path, every: float, once: bool = False) -> None:
    """Rewrite the last attempt's ``last_seen`` now, then every ``every`` seconds."""
    while True:
        record = read_record(record_path)
        if not record["attempts"]:
            raise PipelineError(f"{record_path}: no attempt started (run start first)")
        record["attempts"][-1]["last_seen"] = time.time()
        write_json(record_path, record, sync=True)
        if once:
            return
        time.sleep(every)


def finish(record_path: Path, metrics_path: Path) -> dict:
    """The last beat, then the experiment's cost metrics."""
    beat(record_path, 0, once=True)
    record = read_record(record_path)
    attempts, state = record["attempts"], budget_state(record_path)
    usd, gpu = spent(attempts)
    last = attempts[-1]
    metrics = {  # flat values are the columns of dvc exp show; the list is the detail
        "cost_usd": round(usd, 2), "gpu_hours": round(gpu, 3), "attempts": len(attempts),
        "instance_type": last["instance_type"], "spot": last["spot"], "price_per_hour": last["price_per_hour"],
        **({"max_cost_usd": record["max_cost_usd"]} if record.get("max_cost_usd") is not None else {}),
        **({"budget_stop": state["stop"]} if state.get("stop") else {}),
        "each_attempt": [{k: a[k] for k in ("cloud", "region", "zone", "instance_type", "spot", "nodes",
                                              "gpus_per_node", "price_per_hour", "started", "last_seen")}
                         | {"hours": round(hours(a), 6)} for a in attempts],
    }
    write_json(metrics_path, metrics)
    log.info("the run cost $%.2f: %d attempt(s), %.2f wall hours, %.2f GPU-hours", usd, len(attempts),
             sum(hours(a) for a in attempts), gpu)
    return metrics


def _git(*args: str, env: dict | None = None) -> str:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
        raise PipelineError(f"git {args[0]}: {lines[-1]}")
    return proc.stdout.strip()


def into_experiment(name: str, path: Path) -> str:
    """Put ``path`` as it is now into experiment ``name``'s commit: the commit is replaced by one
    with the same parents, message and the rest of its tree (``dvc exp save`` would rebuild it
    from the workspace, and leave out the files ``dvc exp run`` had added untracked). Returns the
    new commit."""
    ref, commit = experiment_ref(name)
    blob = _git("hash-object", "-w", "--", str(path))
    with tempfile.TemporaryDirectory() as tmp:
        index = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git("read-tree", commit, env=index)
        _git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path.as_posix()}", env=index)
        tree = _git("write-tree", env=index)
    parents = [arg for parent in _git("rev-parse", f"{commit}^@").split() for arg in ("-p", parent)]
    new = _git("commit-tree", tree, *parents, "-m", _git("log", "-1", "--format=%B", commit))
    _git("update-ref", ref, new, commit)
    log.info("%s: experiment %s's commit %s -> %s", path, name, commit[:7], new[:7])
    return new


def check(metrics_path: Path) -> None:
    """One line, and a failure, when the budget stopped training short."""
    stop = read_json(metrics_path).get("budget_stop")
    if stop:
        raise PipelineError(f"budget: training stopped at step {stop['step']} of {stop['max_steps']}, the next "
                            f"checkpoint interval would have passed max_cost_usd ${stop['max_cost_usd']:.2f} "
                            f"(${stop['spent_usd']:.2f} spent then); the experiment holds that adapter")


def finish_command(record_path: Path, metrics_path: Path, experiment: str | None) -> None:
    finish(record_path, metrics_path)
    if experiment:
        into_experiment(experiment, metrics_path)


def start_command(record_path: Path, budget: float | None) -> int:
    """``start``: 0 when recorded; 1 with an ``error:`` line when refused or, under a budget, when
    the cost cannot be known; 2 with a ``warning:`` line when it cannot and nothing depends on it."""
    try:
        start(record_path, budget)
    except PipelineError as err:
        if budget is not None:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"warning: {err}; this run's cost is not recorded", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="record this machine's attempt (refused when the budget would pass)")
    p.add_argument("record", type=Path)
    p.add_argument("--budget", type=float, help="max_cost_usd: dollars for the whole job")
    p = sub.add_parser("beat", help="keep this attempt's last-seen time current")
    p.add_argument("record", type=Path)
    p.add_argument("--every", type=float, default=60.0, help="seconds between beats")
    p.add_argument("--once", action="store_true", help="one beat, then exit")
    p = sub.add_parser("finish", help="the experiment's cost metrics")
    p.add_argument("record", type=Path)
    p.add_argument("metrics", type=Path, nargs="?", help="default: dvc.yaml's paths.cloud_cost")
    p.add_argument("--experiment", help="put the metrics file into this experiment's commit too")
    p = sub.add_parser("check", help="fail with one line when the budget stopped training")
    p.add_argument("metrics", type=Path, nargs="?", help="default: dvc.yaml's paths.cloud_cost")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sky").setLevel(logging.WARNING)
    if args.command == "start":
        return start_command(args.record, args.budget)
    if args.command == "beat":
        return one_line_errors(lambda: beat(args.record, args.every, args.once))
    if getattr(args, "metrics", "") is None:
        args.metrics = Path(output_paths()["cloud_cost"])
    if args.command == "finish":
        return one_line_errors(lambda: finish_command(args.record, args.metrics, args.experiment))
    return one_line_errors(lambda: check(args.metrics))


if __name__ == "__main__":
    raise SystemExit(main())
