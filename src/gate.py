"""The quality gate's checks: the fine-tuned model's metrics against ``quality_gate``'s thresholds.

The ``quality_gate`` stage checks one run; ``python -m src.sweep`` checks the worst seed of a
sweep with the same rules.
"""

from __future__ import annotations

import operator

from src.config import GateParams
from src.errors import PipelineError

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


def worst(metric: str, values: list[float]) -> float:
    """The value of ``values`` furthest on the failing side of ``metric``'s check."""
    passes = next(rule for name, rule, _ in CHECKS.values() if name == metric)
    return min(values) if passes is operator.ge else max(values)


def failure_line(results: dict[str, dict]) -> str | None:
    """``quality gate failed: retention 0.8 < 0.95 (quality_gate.min_retention); ...`` or None."""
    parts = []
    for key, (metric, _, sign) in CHECKS.items():
        r = results.get(metric)
        if r and not r["passed"]:
            parts.append(f"{metric} {r['value']:g} {sign} {r['threshold']:g} (quality_gate.{key})")
    return "quality gate failed: " + "; ".join(parts) if parts else None
