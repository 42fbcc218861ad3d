"""Seed sweeps: how far a recipe's results move with the seed alone, and whether the gate holds
on the worst seed.

Run the recipe over seeds with DVC's own queue, then report::

    dvc exp run --queue -S 'train.seed=range(0,5)'
    QUALITY_GATE=defer dvc exp run --run-all
    python -m src.sweep

(``QUALITY_GATE=defer``: a seed that fails the gate still becomes an experiment, its failure
recorded in ``quality_gate.json``; DVC keeps nothing of a queued run that fails.)

The report takes the finished experiments of the current commit (or those ``--exp`` names),
groups those whose params differ only in the seed keys (``--key``, ``train.seed`` by default;
give it once per key a sweep changes), and prints for each group: per headline metric the
mean, the sample standard deviation, the worst value and its seed; which seeds fail the gate
and why; and the gate on the worst seed (each check's worst value over the seeds against its
threshold). It writes ``sweep.json`` (all of it) and a chart (``plots/index.html``, by
``dvc plots show``) under ``--out``. ``--gate`` ends non-zero, with one line, unless the gate
holds on every seed.

    python -m src.sweep [--key train.seed] [--exp NAME ...] [--gate] [--out sanity_check_result/sweep]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

from src.cli import run
from src.config import Params, output_paths
from src.errors import PipelineError
from src.files import write_json
from src.gate import CHECKS, failure_line, worst

log = logging.getLogger(__name__)

# The headline metrics: (file in dvc.yaml's paths, metric in it, whether higher is better).
HEADLINE = (("evaluation", "identity_accuracy", True), ("evaluation", "identity_leak_rate", False),
            ("evaluation", "retention", True), ("evaluation", "eos_rate", True),
            ("evaluation", "val_loss", False), ("benchmark", "mean_delta_points", True),
            ("benchmark", "worst_delta_points", True))
CHART_TEMPLATE = "seed_sweep"  # .dvc/plots/seed_sweep.json
QUEUE_HINT = "dvc exp run --queue -S 'train.seed=range(0,5)' && QUALITY_GATE=defer dvc exp run --run-all"


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}`` (lists kept whole)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiments(repo: Path = Path("."), names: list[str] | None = None) -> list[dict]:
    """The finished experiments of the current commit as ``dvc exp show --json`` gives them
    (queued, running and failed ones left out), or those of ``names``."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        shown = [e.dumpd() for e in dvc.experiments.show(hide_queued=True, hide_failed=True, hide_workspace=True)]
    found = []
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp.get("executor") and exp["executor"].get("state") not in (None, "success"):
                continue  # still running
            tip = exp["revs"][0]  # the experiment's last commit
            if not tip.get("error"):
                found.append(tip)
    if names:
        missing = sorted(set(names) - {rev["name"] for rev in found})
        if missing:
            raise PipelineError(f"no finished experiment named {', '.join(missing)} on this commit (dvc exp show)")
        found = [rev for rev in found if rev["name"] in names]
    return found


def seed_run(exp: dict, keys: list[str], files: dict[str, str]) -> dict:
    """One experiment's seed, the other params, its headline metrics and its gate record."""
    data, name = exp["data"], exp["name"] or exp["rev"][:7]
    params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
    missing = [key for key in keys if key not in params]
    if missing:
        raise PipelineError(f"experiment {name}: no params {', '.join(missing)} (--key names a params.yaml key)")
    metrics = {}
    for kind, path in files.items():
        found = (data.get("metrics") or {}).get(path, {}).get("data")
        if found is None:
            raise PipelineError(f"experiment {name}: no {path} (did it run the whole pipeline?)")
        metrics[kind] = found
    return {"name": name, "rev": exp["rev"], "seed": {key: params.pop(key) for key in keys}, "params": params,
            "metrics": {metric: metrics[kind].get(metric) for kind, metric, _ in HEADLINE},
            "gate": metrics["quality_gate"]}


def seed_label(run_: dict) -> str:
    return ", ".join(str(v) for v in run_["seed"].values())


def groups(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by every params value but the seeds, in the order first met, each
    group in seed order."""
    by_params: dict[str, list[dict]] = {}
    for run_ in runs:
        by_params.setdefault(json.dumps(run_["params"], sort_keys=True, default=str), []).append(run_)
    return [sorted(g, key=lambda r: [str(v) for v in r["seed"].values()]) for g in by_params.values()]


def spread(runs: list[dict]) -> dict[str, dict]:
    """Per headline metric: mean, sample standard deviation (0 for one seed), worst value and its seed."""
    out = {}
    for _, metric, higher_better in HEADLINE:
        pairs = [(r["metrics"][metric], seed_label(r)) for r in runs if r["metrics"][metric] is not None]
        if not pairs:
            continue
        values = [v for v, _ in pairs]
        value, seed = (min if higher_better else max)(pairs, key=lambda p: p[0])
        out[metric] = {"mean": round(statistics.fmean(values), 4),
                       "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                       "worst": value, "worst_seed": seed, "n": len(values)}
    return out


def worst_seed_gate(runs: list[dict]) -> dict[str, dict]:
    """Each gate check over the seeds: its worst value, the seed, the threshold, whether it passes."""
    out = {}
    for metric, rule, _ in CHECKS.values():
        recorded = [(r["gate"]["checks"][metric], seed_label(r)) for r in runs if metric in r["gate"].get("checks", {})]
        if not recorded:
            continue
        value = worst(metric, [c["value"] for c, _ in recorded])
        check, seed = next((c, s) for c, s in recorded if c["value"] == value)
        out[metric] = {"value": value, "seed": seed, "threshold": check["threshold"],
                       "passed": bool(rule(value, check["threshold"]))}
    return out


def differing(group: list[dict], first: list[dict]) -> dict:
    """The params in which ``group`` differs from ``first`` (the first group)."""
    mine, theirs = group[0]["params"], first[0]["params"]
    return {k: mine.get(k) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}


def summarise(runs: list[dict], keys: list[str]) -> list[dict]:
    found = groups(runs)
    return [{"keys": keys, "params_apart": differing(g, found[0]), "seeds": [seed_label(r) for r in g],
             "experiments": [r["name"] for r in g], "spread": spread(g),
             "failing_seeds": {seed_label(r): failure_line(r["gate"].get("checks", {})) for r in g
                               if not r["gate"].get("passed", False)},
             "worst_seed_gate": worst_seed_gate(g),
             "per_seed": {seed_label(r): r["metrics"] | {"gate_passed": bool(r["gate"].get("passed"))} for r in g}}
            for g in found]


def chart_rows(summary: list[dict]) -> list[dict]:
    """One row per group, seed and headline metric: what the chart draws."""
    rows = []
    for i, group in enumerate(summary):
        label = f"sweep {i + 1}" if len(summary) > 1 else "sweep"
        for seed, metrics in group["per_seed"].items():
            gate = "passed" if metrics["gate_passed"] else "failed"
            rows += [{"metric": metric, "sweep": label, "seed": seed, "value": metrics[metric], "gate": gate}
                     for _, metric, _ in HEADLINE if metrics[metric] is not None]
    return rows


def table(group: dict, label: str = "") -> str:
    """The group's report as text: a line per metric, then the gate."""
    keys = " and ".join(group["keys"])
    lines = [f"{label}{len(group['seeds'])} experiment{'s' if len(group['seeds']) > 1 else ''} over {keys} = "
             f"{', '.join(group['seeds'])}"
             + (f" (params apart from sweep 1: {group['params_apart']})" if group["params_apart"] else "")
             + f": {', '.join(group['experiments'])}",
             f"  {'metric':<22}{'mean':>9}{'std':>9}{'worst':>9}  worst seed"]
    for metric, s in group["spread"].items():
        lines.append(f"  {metric:<22}{s['mean']:>9.4g}{s['std']:>9.4g}{s['worst']:>9.4g}  {s['worst_seed']}")
    for seed, why in group["failing_seeds"].items():
        lines.append(f"  seed {seed}: {why}")
    if not group["failing_seeds"]:
        lines.append(f"  the quality gate passes on every seed ({len(group['seeds'])})")
    lines.append("  the gate on the worst seed:")
    lines += [f"    {m:<30}{c['value']:>9.4g} (seed {c['seed']}) {'passes' if c['passed'] else 'FAILS'} "
              f"against {c['threshold']:g}" for m, c in group["worst_seed_gate"].items()]
    return "\n".join(lines)


def chart(rows_file: Path, out: Path) -> Path:
    """The chart of ``rows_file`` by ``dvc plots show`` (a row per metric, a point per seed)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", str(rows_file), "--template", CHART_TEMPLATE,
                           "-x", "metric", "-y", "value", "--title", "Headline metrics over the seeds",
                           "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc plots show {rows_file}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return out / "index.html"


def main(cfg: Params, key: list[str] | None, exp: list[str] | None, gate: bool, out: Path) -> list[dict]:
    keys = key or ["train.seed"]
    paths = output_paths()
    files = {"evaluation": paths["evaluation"], "benchmark": paths["benchmark"], "quality_gate": paths["quality_gate"]}
    found = experiments(names=exp)
    if not found:
        raise PipelineError(f"no finished experiments on this commit: queue a sweep first ({QUEUE_HINT})")
    summary = summarise([seed_run(e, keys, files) for e in found], keys)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"sweeps": summary})
    rows_file = out / "rows.json"
    write_json(rows_file, {"rows": chart_rows(summary)})
    page = chart(rows_file, out / "plots")
    print("\n\n".join(table(g, f"sweep {i + 1}: " if len(summary) > 1 else "") for i, g in enumerate(summary)))
    print(f"\n{out / 'sweep.json'}; chart: {page}")
    if gate:
        failing = [f"{f'sweep {i + 1} ' if len(summary) > 1 else ''}seed {seed} "
                   f"({why.removeprefix('quality gate failed: ')})"
                   for i, g in enumerate(summary) for seed, why in g["failing_seeds"].items()]
        if failing:
            raise PipelineError(f"the quality gate fails on {len(failing)} of the "
                                f"{sum(len(g['seeds']) for g in summary)} experiments: {'; '.join(failing)}")
    return summary


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", action="append", help="a params key the sweep varies (default train.seed); "
                        "once per key")
    parser.add_argument("--exp", nargs="+", help="these experiments only (names as dvc exp show gives them)")
    parser.add_argument("--gate", action="store_true", help="end non-zero unless the quality gate passes on every seed")
    parser.add_argument("--out", type=Path, default=Path("sanity_check_result/sweep"),
                        help="where sweep.json and the chart go (default: %(default)s)")


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, add_args))
