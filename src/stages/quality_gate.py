"""Stage ``quality_gate``: the fine-tuned model against the thresholds in ``quality_gate``.

Reads ``paths.evaluation`` (written by ``evaluate``) and ``paths.benchmark`` (``benchmark``) and
checks identity accuracy, the identity leak rate, retention and the EOS rate of the fine-tuned
model, and its benchmark drop: the base's score less the fine-tuned's, in points, the mean over
``benchmark.tasks`` (no check when the threshold is null or there are no tasks). Writes every check to
``paths.quality_gate`` (a DVC metric) first; then, if any fails, ends non-zero with one line
naming each failing metric, its value and its threshold, so ``dvc exp run`` cannot pass
quietly. A threshold change reruns this stage alone, not the evaluation.

``QUALITY_GATE=defer`` in the environment records a failure without failing (the cloud run
uses it to push the experiment first, then fails with the same line through
``python -m src.stages.quality_gate``).

    python -m src.stages.quality_gate
"""

from __future__ import annotations

import logging
import operator
import os

from src.cli import run
from src.config import GateParams, Params
from src.errors import PipelineError
from src.files import read_json, write_json

log = logging.getLogger(__name__)

DEFER_ENV = "QUALITY_GATE"

# threshold key -> (metric in evaluation.json, comparison that passes, its sign for the message)
CHECKS = {
    "min_identity_accuracy": ("finetuned.identity_accuracy", operator.ge, "<"),
    "max_identity_leak_rate": ("finetuned.identity_leak_rate", operator.le, ">"),
    "min_retention": ("retention", operator.ge, "<"),
    "min_eos_rate": ("finetuned.eos_rate", operator.ge, "<"),
    "max_benchmark_drop": ("benchmark_drop_points", operator.le, ">"),
}


def lookup(metrics: dict, dotted: str, source: str) -> float:
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PipelineError(f"{source}: no metric {dotted} (rerun the evaluate stage)")
        value = value[part]
    return value


def gate_metrics(evaluation: dict, benchmark: dict) -> dict:
    """evaluation.json's metrics and the benchmark drop (None without benchmark tasks)."""
    mean = benchmark["mean_delta_points"]
    return {**evaluation, "benchmark_drop_points": None if mean is None else -mean}


def check(metrics: dict, gate: GateParams, source: str = "evaluation") -> dict[str, dict]:
    """Every check: the metric's value, its threshold and whether it passes."""
    results = {}
    for key, (metric, passes, _) in CHECKS.items():
        if getattr(gate, key) is None or metric in metrics and metrics[metric] is None:
            continue
        value, threshold = lookup(metrics, metric, source), getattr(gate, key)
        results[metric] = {"value": value, "threshold": threshold, "passed": bool(passes(value, threshold))}
    return results


def failure_line(results: dict[str, dict]) -> str | None:
    """``quality gate failed: retention 0.8 < 0.95 (quality_gate.min_retention); ...`` or None."""
    parts = []
    for key, (metric, _, sign) in CHECKS.items():
        r = results.get(metric)
        if r and not r["passed"]:
            parts.append(f"{metric} {r['value']:g} {sign} {r['threshold']:g} (quality_gate.{key})")
    return "quality gate failed: " + "; ".join(parts) if parts else None


def main(cfg: Params) -> dict:
    paths = cfg.paths
    metrics = gate_metrics(read_json(paths.evaluation), read_json(paths.benchmark))
    results = check(metrics, cfg.quality_gate, f"{paths.evaluation} and {paths.benchmark}")
    failed = failure_line(results)
    write_json(paths.quality_gate, {"passed": failed is None, "checks": results})
    if failed is None:
        log.info("quality gate passed: %s", ", ".join(f"{m} {r['value']:g}" for m, r in results.items()))
    elif os.environ.get(DEFER_ENV) == "defer":
        log.warning("%s (%s=defer: recorded in %s, not failing now)", failed, DEFER_ENV, paths.quality_gate)
    else:
        raise PipelineError(failed)
    return results


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
