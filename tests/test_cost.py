"""What a cloud run costs (src/cloud/cost.py, src/budget.py), offline: EC2's metadata service on
127.0.0.1, SkyPilot's price catalog as a file in a HOME, attempts records written by hand. The
whole job's cost, over a preempted run's three machines: test_cloud.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from src.budget import BudgetStop, spent
from src.cloud import cost
from src.cloud.cost import SETUP_MARK, finish
from src.errors import PipelineError
from tests.cloudkit import FakeImds, price_catalog
from tests.conftest import OFFLINE, ROOT, run_cli

# g5.xlarge's spot price differs by zone: the machine's own zone decides it
CATALOG = [("g5.xlarge", "A10G", 1, 1.006, 0.3872, "us-east-1", "us-east-1a"),
           ("g5.xlarge", "A10G", 1, 1.006, 0.4012, "us-east-1", "us-east-1b")]
CLUSTER = {"cluster_name": "sky-1234-alice", "cloud": "AWS", "region": "us-east-1", "zone": "us-east-1b"}


@pytest.fixture
def machine(tmp_path):
    """A HOME with the catalog and a setup that began 90 s ago, and EC2's metadata service."""
    home = tmp_path / "home"
    price_catalog(home, "aws", CATALOG)
    (home / SETUP_MARK).write_text(f"{int(time.time()) - 90}\n")
    imds = FakeImds("g5.xlarge", spot=True)
    env = {**OFFLINE, "HOME": str(home), "SKYPILOT_CLUSTER_INFO": json.dumps(CLUSTER), "SKYPILOT_NUM_NODES": "1",
           "SKYPILOT_NUM_GPUS_PER_NODE": "1", "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
           "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}
    yield home, env, imds
    imds.close()


def cost_cli(*args: str, cwd: Path, env: dict) -> object:
    return run_cli([sys.executable, "-m", "src.cloud.cost", *args], cwd, env={**env, "PYTHONPATH": str(ROOT)})


def attempt(started: float, last_seen: float, price: float = 0.4012, nodes: int = 1, gpus: int = 1) -> dict:
    return {"cloud": "aws", "region": "us-east-1", "zone": "us-east-1b", "instance_type": "g5.xlarge", "spot": True,
            "nodes": nodes, "gpus_per_node": gpus, "price_per_hour": price, "started": started,
            "last_seen": last_seen}


def test_an_attempt_records_its_machine_and_the_catalog_price_of_its_zone(machine, tmp_path):
    home, env, imds = machine
    record = tmp_path / "bucket/alice/exp/cost.json"
    proc = cost_cli("start", str(record), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    (first,) = json.loads(record.read_text())["attempts"]
    assert (first["cloud"], first["region"], first["zone"]) == ("aws", "us-east-1", "us-east-1b")
    assert (first["instance_type"], first["spot"], first["price_per_hour"]) == ("g5.xlarge", True, 0.4012)
    assert 89 <= first["last_seen"] - first["started"] <= 150  # from the setup's start, not this command's
    assert not (home / SETUP_MARK).exists()  # the next machine's attempt starts at its own setup
    assert imds.requests[0] == "PUT /latest/api/token" and "GET /latest/meta-data/instance-life-cycle" in imds.requests
    assert "attempt 1: aws us-east-1b g5.xlarge (spot) at $0.4012/h x 1" in proc.stderr

    # where the cloud has no metadata service, the launch says what the machine is; on-demand price
    env = {**env, "INSTANCE_TYPE": "g5.xlarge", "USE_SPOT": "false", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://0.0.0.0:9"}
    assert cost_cli("start", str(record), cwd=tmp_path, env=env).returncode == 0
    second = json.loads(record.read_text())["attempts"][1]
    assert (second["spot"], second["price_per_hour"]) == (False, 1.006)


def test_an_instance_the_catalog_lacks_is_a_warning_or_under_a_budget_one_line(machine, tmp_path, monkeypatch,
                                                                             capsys):
    _, env, _ = machine
    warned = cost_cli("start", str(tmp_path / "cost.json"), cwd=tmp_path, env={**env, "INSTANCE_TYPE": "p5.48xlarge"})
    assert not (tmp_path / "cost.json").exists()
    reason = "aws p5.48xlarge in us-east-1/us-east-1b: no price in SkyPilot's catalog"
    assert warned.returncode == 2 and warned.stderr.strip().splitlines()[-1].startswith(f"warning: {reason}")
    assert warned.stderr.strip().endswith("; this run's cost is not recorded")

    def unpriced(*args):
        raise PipelineError(reason)

    monkeypatch.setattr(cost, "start", unpriced)
    assert cost.start_command(tmp_path / "cost.json", 10.0) == 1  # a budget needs the price
    assert capsys.readouterr().err.strip() == f"error: {reason}"


def test_an_attempt_that_would_pass_the_budget_does_not_start(tmp_path, monkeypatch):
    """Earlier attempts spent $0.80; training's checkpoints came every 600 s. One more interval
    ($0.067) with this attempt's setup ($0.01) passes $0.85 but not $0.90. (The machine and its
    price as the tests above find them.)"""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(cost, "this_machine", lambda: {k: v for k, v in attempt(0, 0).items()
                                                        if k not in ("price_per_hour", "started", "last_seen")})
    monkeypatch.setattr(cost, "catalog_price", lambda machine: 0.4012)
    record = tmp_path / "cost.json"
    now = time.time()
    earlier = {"attempts": [attempt(now - 9000, now - 5400, price=0.4), attempt(now - 5000, now - 1400, price=0.4)]}
    record.write_text(json.dumps(earlier))
    (tmp_path / "budget.json").write_text(json.dumps({"interval_seconds": 600.0}))
    (tmp_path / SETUP_MARK).write_text(f"{int(time.time()) - 90}\n")
    with pytest.raises(PipelineError) as refused:
        cost.start(record, 0.85)
    assert str(refused.value) == (
        "budget: $0.81 spent over 3 attempt(s); one more checkpoint interval (600 s) would pass "
        f"max_cost_usd $0.85. Nothing more is run; the checkpoints stay in {tmp_path} (launch again with a "
        "larger MAX_COST_USD and the same EXP_NAME to go on)")
    assert json.loads(record.read_text()) == earlier  # not counted as an attempt
    (tmp_path / SETUP_MARK).write_text(f"{int(time.time()) - 90}\n")
    cost.start(record, 0.90)
    assert len(json.loads(record.read_text())["attempts"]) == 3


def test_the_cost_is_every_attempts_hours_times_its_price_and_machines(tmp_path):
    record = tmp_path / "cost.json"
    now = time.time()
    preempted = attempt(now - 7200, now - 4500, price=0.4012)  # three quarters of an hour, then lost
    replacement = attempt(now - 3600, now, price=0.3872, nodes=2, gpus=4)  # an hour, two machines
    record.write_text(json.dumps({"attempts": [preempted, replacement], "max_cost_usd": 5.0}))
    metrics = finish(record, tmp_path / "metrics.json")
    assert metrics["cost_usd"] == round(0.75 * 0.4012 + 1.0 * 0.3872 * 2, 2) == 1.08
    assert metrics["gpu_hours"] == pytest.approx(0.75 * 1 + 1.0 * 8, abs=0.01)
    assert metrics["attempts"] == 2 and metrics["max_cost_usd"] == 5.0 and "budget_stop" not in metrics
    assert [a["hours"] for a in metrics["each_attempt"]] == [0.75, pytest.approx(1.0, abs=1e-3)]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


class State:
    def __init__(self, step: int, max_steps: int = 90):
        self.global_step, self.max_steps, self.is_world_process_zero = step, max_steps, True


class Control:
    should_training_stop = False


def test_training_stops_at_the_checkpoint_after_which_one_more_interval_would_pass_the_budget(tmp_path):
    """$1/h since an hour ago; checkpoints 20 minutes apart: at $1.50 the check after the first
    interval lets training go on ($1.00 + $0.33), the one after the second stops it."""
    record = tmp_path / "cost.json"
    now = time.time()
    record.write_text(json.dumps({"attempts": [attempt(now - 3600, now - 3600, price=1.0)]}))
    stop = BudgetStop(record, 1.50)
    stop.since = now - 1200
    control = Control()
    stop.on_save(None, State(30), control)
    assert not control.should_training_stop
    assert json.loads((tmp_path / "budget.json").read_text())["interval_seconds"] == pytest.approx(1200, abs=5)
    stop.since -= 1200  # the next interval took as long again, and the attempt is 20 min older
    record.write_text(json.dumps({"attempts": [attempt(now - 4800, now - 4800, price=1.0)]}))
    stop.on_save(None, State(60), control)
    assert control.should_training_stop
    state = json.loads((tmp_path / "budget.json").read_text())
    assert state["stop"] == {"step": 60, "max_steps": 90, "spent_usd": pytest.approx(1.33, abs=0.01),
                             "max_cost_usd": 1.5}
    # the experiment's metrics say so, and the job's last check fails with one line
    metrics = finish(record, tmp_path / "metrics.json")
    assert metrics["budget_stop"]["step"] == 60
    proc = run_cli([sys.executable, "-m", "src.cloud.cost", "check", str(tmp_path / "metrics.json")], tmp_path,
                   env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "error: budget: training stopped at step 60 of 90, the next checkpoint interval would have passed "
        "max_cost_usd $1.50 ($1.33 spent then); the experiment holds that adapter")


def test_without_a_budget_or_a_record_training_has_no_budget_check(monkeypatch, tmp_path):
    monkeypatch.delenv("TRAIN_MAX_COST_USD", raising=False)
    monkeypatch.setenv("TRAIN_COST_RECORD", str(tmp_path / "cost.json"))
    assert BudgetStop.from_environment() is None
    monkeypatch.setenv("TRAIN_MAX_COST_USD", "twelve")
    with pytest.raises(Exception, match="TRAIN_MAX_COST_USD='twelve': a number of dollars"):
        BudgetStop.from_environment()
    assert spent([]) == (0.0, 0.0)


def test_the_estimate_prices_the_profiles_tokens_on_each_gpu_with_its_assumptions(tmp_path):
    """100 records of 1,140 characters in two turns: 300 + 12 tokens each, 5 epochs: 156,000
    tokens. On an H200 at the recorded 3,469 tokens/s, spot at $3.10/h; on an A10G at a given
    1,000 tokens/s, on demand at $1.006/h; a GPU no catalog offers is said to be so."""
    import shutil

    for name in ("params.yaml", "sky-training.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    (tmp_path / "data/final").mkdir(parents=True)
    record = {"prompt": [{"role": "user", "content": "q" * 380}], "completion": [{"role": "assistant",
                                                                                  "content": "a" * 760}]}
    (tmp_path / "data/final/train.jsonl").write_text((json.dumps(record) + "\n") * 100)
    home = tmp_path / "home"
    price_catalog(home, "aws", [("g5.xlarge", "A10G", 1, 1.006, 0.3872, "us-east-1", "us-east-1a"),
                                ("g5.xlarge", "A10G", 1, 1.106, 0.35, "us-west-2", "us-west-2a"),
                                ("p5e.xlarge", "H200", 1, 8.0, 3.1, "us-east-1", "us-east-1a")])
    env = {**OFFLINE, "HOME": str(home), "PYTHONPATH": str(ROOT)}
    estimate = [sys.executable, "-m", "src.cloud.estimate", "profiles/llama2-7b-qlora.yaml", "--clouds", "aws"]
    proc = run_cli([*estimate, "--gpu", "H200", "--gpu", "A10G", "--gpu", "T4", "--json", "spot.json"], tmp_path,
                   env=env)
    assert proc.returncode == 0, proc.stderr
    h200, a10g, t4 = json.loads((tmp_path / "spot.json").read_text())
    assert h200["cost_usd"] == pytest.approx(156_000 / 3469 / 3600 * 3.1)
    assert h200["offer"] == {"cloud": "AWS", "region": "us-east-1", "instance_type": "p5e.xlarge", "price": 3.1}
    assert a10g["offer"]["price"] == 0.35 and a10g["cost_usd"] is None  # cheapest region; no tokens/s for it
    assert t4["offer"] is None
    out = proc.stdout
    assert "llama-2-7b-chat, 156,000 tokens of training" in out
    assert "312 tokens per record: their text at 3.8 characters per token, 6 more per turn" in out
    assert "5 epoch(s) over 100 records" in out and "tokens/s recorded for H200 with llama-2-7b-chat only" in out
    assert "T4         not in the catalogs" in out and "training only:" in out

    proc = run_cli([*estimate, "--gpu", "A10G", "--tokens-per-second", "1000", "--on-demand", "--json", "od.json"],
                   tmp_path, env=env)
    (a10g,) = json.loads((tmp_path / "od.json").read_text())
    assert a10g["offer"]["price"] == 1.006 and a10g["cost_usd"] == pytest.approx(156 / 3600 * 1.006)
    assert "on-demand prices" in proc.stdout and "A10G tokens/s from --tokens-per-second" in proc.stdout

    (tmp_path / "data/final/train.jsonl").unlink()
    proc = run_cli([*estimate, "--gpu", "H200"], tmp_path, env=env)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "error: data/final/train.jsonl is missing: build it with the profile's data, or pass --records N")
