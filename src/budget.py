"""The cloud job's spending as training sees it: the attempts record that ``src/cloud/cost.py``
keeps in the checkpoint folder, and ``BudgetStop``, which ends training at a checkpoint when one
more checkpoint interval would pass the job's budget.

A module of its own so that the train stage depends on this and not on the cloud commands.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from src.errors import PipelineError
from src.files import read_json, write_json
from src.live_metrics import TrainerEvents

log = logging.getLogger(__name__)

RECORD_ENV = "TRAIN_COST_RECORD"  # the attempts record (src/cloud/cost.py); BudgetStop reads it
BUDGET_ENV = "TRAIN_MAX_COST_USD"  # the budget in dollars, for BudgetStop
BUDGET_FILE = "budget.json"  # beside the record: train's longest checkpoint interval and any stop


def read_record(path: Path) -> dict:
    """``{"attempts": [...]}``; empty before the first attempt."""
    if not path.exists():
        return {"attempts": []}
    record = read_json(path)
    if not isinstance(record.get("attempts"), list):
        raise PipelineError(f"{path}: not a record of attempts")
    return record


def hours(attempt: dict, now: float | None = None) -> float:
    """The attempt's wall hours: from its start to ``now`` (the running one) or its last beat."""
    return max(0.0, ((now if now is not None else attempt["last_seen"]) - attempt["started"]) / 3600)


def spent(attempts: list[dict], now: float | None = None) -> tuple[float, float]:
    """(dollars, GPU-hours) of the attempts; the last one counted up to ``now`` when given."""
    usd = gpu = 0.0
    for i, attempt in enumerate(attempts):
        h = hours(attempt, now if i == len(attempts) - 1 else None)
        usd += h * attempt["price_per_hour"] * attempt["nodes"]
        gpu += h * attempt["gpus_per_node"] * attempt["nodes"]
    return usd, gpu


def rate(attempt: dict) -> float:
    """Dollars per second of the attempt's machines."""
    return attempt["price_per_hour"] * attempt["nodes"] / 3600


def budget_state(record_path: Path) -> dict:
    path = record_path.parent / BUDGET_FILE
    return read_json(path) if path.exists() else {}


class BudgetStop(TrainerEvents):
    """After each checkpoint: stop training there when one more interval would pass the budget
    (``TRAIN_MAX_COST_USD`` against ``TRAIN_COST_RECORD``). Every process of a distributed run
    takes the first one's decision."""

    def __init__(self, record_path: Path, budget: float):
        self.record_path, self.budget, self.since = record_path, budget, time.time()

    @classmethod
    def from_environment(cls) -> BudgetStop | None:
        record, budget = os.environ.get(RECORD_ENV), os.environ.get(BUDGET_ENV)
        if not (record and budget):
            return None
        try:
            return cls(Path(record), float(budget))
        except ValueError as err:
            raise PipelineError(f"{BUDGET_ENV}={budget!r}: a number of dollars") from err

    def on_train_begin(self, args, state, control, **kwargs):
        self.since = time.time()

    def on_save(self, args, state, control, **kwargs):
        now = time.time()
        interval, self.since = now - self.since, now
        stop = self.decide(now, interval, state.global_step, state.max_steps) if state.is_world_process_zero else None
        stop = _shared(stop)
        if stop:
            log.warning("budget: stopping at step %d of %d: one more checkpoint interval (%.0f s) would pass "
                        "max_cost_usd $%.2f ($%.2f spent)", stop["step"], stop["max_steps"], interval,
                        self.budget, stop["spent_usd"])
            control.should_training_stop = True

    def decide(self, now: float, interval: float, step: int, max_steps: int) -> dict | None:
        attempts = read_record(self.record_path)["attempts"]
        if not attempts:
            return None
        state = budget_state(self.record_path)
        state["interval_seconds"] = max(interval, state.get("interval_seconds", 0.0))
        usd, _ = spent(attempts, now)
        if usd + interval * rate(attempts[-1]) > self.budget:
            state["stop"] = {"step": step, "max_steps": max_steps, "spent_usd": round(usd, 2),
                             "max_cost_usd": self.budget}
        write_json(self.record_path.parent / BUDGET_FILE, state, sync=True)
        return state.get("stop")


def _shared(value):
    """The first process's ``value`` in every process of a distributed run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
