"""Standard benchmarks through lm-evaluation-harness (``lm-eval``, used as a library), for the
``benchmark_base`` and ``benchmark`` stages: task names checked against the pinned harness and
the project's own task folder, one model scored on each task of ``benchmark.tasks`` with its
few-shot count and limit, and the fine-tuned model's scores set beside the base's.

Scores are fractions as the harness reports them (accuracy 0.97) with the harness's own
standard error; differences between the models are in points (hundredths).

    python -m src.benchmarking --right-of models/base   # the local task's questions the base answers right
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
from pathlib import Path

from src.config import BenchmarkParams, BenchmarkTask, Params
from src.errors import PipelineError

log = logging.getLogger(__name__)


def task_manager(params: BenchmarkParams, root: Path = Path(".")):
    """The harness's task index over ``tasks_dir`` (the project's own task YAMLs, relative to the
    repository ``root``), with the harness's built-in tasks only when a task name needs them
    (indexing those takes 8 s)."""
    include = str((root / params.tasks_dir).resolve()) if params.tasks_dir else None
    if include:
        local = _task_index(include, False)
        if set(params.tasks) <= set(local.all_tasks):
            return local
    return _task_index(include, True)


@functools.lru_cache(maxsize=4)
def _task_index(include: str | None, defaults: bool):
    """One index per folder and scope in a process (checking a profile's names, then scoring)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults)


def check_task_names(params: BenchmarkParams, manager=None, root: Path = Path(".")) -> None:
    """Every name in ``benchmark.tasks`` is a task, group or tag the harness knows; else one line."""
    import difflib

    if not params.tasks:
        return
    manager = manager or task_manager(params, root)
    known = set(manager.all_tasks)
    for name in params.tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise PipelineError(f"params.yaml: benchmark.tasks.{name}: no such task in lm-eval "
                                f"{harness_version()} or {params.tasks_dir}{hint}")


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def pick(results: dict, metric: str, task: str) -> tuple[float, float]:
    """The value and standard error of ``metric`` in one task's results (the harness keys them
    ``<metric>,<filter>``: ``acc,none``, ``exact_match,strict-match``)."""
    keys = [k for k in results if k == metric or k.split(",")[0] == metric and "_stderr" not in k]
    if not keys:
        found = sorted({k.split(",")[0] for k, v in results.items()
                        if "_stderr" not in k and isinstance(v, (int, float)) and k != "sample_len"})
        raise PipelineError(f"params.yaml: benchmark.tasks.{task}.metric: {metric!r} is not among the task's "
                            f"metrics ({', '.join(found)})")
    key = sorted(keys)[0]
    name, _, where = key.partition(",")
    stderr = results.get(f"{name}_stderr,{where}" if where else f"{name}_stderr")
    value = float(results[key])
    return value, float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else float("nan")


def harness_model(model, tokenizer, params: BenchmarkParams):
    """A loaded model and its tokenizer as the harness's ``hf`` model."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=params.batch_size, device=str(model.device))


def run_task(lm, name: str, task: BenchmarkTask, manager, log_samples: bool = False) -> dict:
    """The harness's output for one task (seeded: the same few-shot examples every time)."""
    import lm_eval

    return lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=task.num_fewshot, limit=task.limit,
                                   task_manager=manager, log_samples=log_samples, bootstrap_iters=1000,
                                   random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


def score(model, tokenizer, params: BenchmarkParams, manager=None) -> dict[str, dict]:
    """Each task of ``params.tasks`` on one loaded model: {task: metric, value, stderr, n,
    num_fewshot, limit}."""
    manager = manager or task_manager(params)
    lm = harness_model(model, tokenizer, params)
    scores = {}
    for name, task in params.tasks.items():
        out = run_task(lm, name, task, manager)
        results = out["results"].get(name) or next(iter(out["results"].values()))
        value, stderr = pick(results, task.metric, name)
        n = out.get("n-samples", {}).get(name, {}).get("effective")
        scores[name] = {"metric": task.metric, "value": value, "stderr": stderr, "n": n,
                        "num_fewshot": task.num_fewshot, "limit": task.limit}
        log.info("%s: %s %.4f ± %.4f (n=%s)", name, task.metric, value, stderr, n)
    return scores


def compare(base: dict[str, dict], finetuned: dict[str, dict]) -> dict:
    """Per task the base's and the fine-tuned model's score, the change in points and its
    standard error (the two models' errors combined); the mean change over the tasks and the
    largest drop."""
    tasks, rows = {}, []
    for name, ft in finetuned.items():
        b = base.get(name)
        if b is None or any(b[key] != ft[key] for key in ("metric", "limit", "num_fewshot")):
            raise PipelineError(f"benchmark: the base's scores of {name} were taken with other settings "
                                "(rerun benchmark_base)")
        delta = 100 * (ft["value"] - b["value"])
        stderr = 100 * math.sqrt(sum(x * x for x in (b["stderr"], ft["stderr"]) if math.isfinite(x)))
        tasks[name] = {"metric": ft["metric"], "base": b["value"], "finetuned": ft["value"],
                       "base_stderr": b["stderr"], "finetuned_stderr": ft["stderr"], "n": ft["n"],
                       "delta_points": round(delta, 4), "delta_stderr_points": round(stderr, 4)}
        label = f"{name} ({ft['metric']})"
        rows += [{"metric": label, "model": "base", "value": b["value"]},
                 {"metric": label, "model": "fine-tuned", "value": ft["value"]}]
    deltas = [t["delta_points"] for t in tasks.values()]
    return {"mean_delta_points": round(sum(deltas) / len(deltas), 4) if deltas else None,
            "worst_delta_points": min(deltas) if deltas else None,
            "tasks": tasks, "base_vs_finetuned": rows}


def score_folder(model_dir: str | Path, cfg: Params) -> dict[str, dict]:
    """A model folder's scores on ``benchmark.tasks`` (none when the list is empty), in the
    precision every evaluation here uses (``train.precision`` resolved: bf16 on CPUs that have
    it), the names checked before the model is loaded."""
    params = cfg.benchmark
    if not params.tasks:
        log.info("benchmark.tasks is empty: no scores")
        return {}
    from src.modeling import compute_dtype, load_for_inference

    manager = task_manager(params)
    check_task_names(params, manager)
    tokenizer, model = load_for_inference(model_dir, compute_dtype(cfg.train.precision),
                                          cfg.fetch_base_model.trust_remote_code)
    return score(model, tokenizer, params, manager)


def right_answers(model_dir: Path, params: BenchmarkParams, name: str) -> list[str]:
    """The questions of one task that a model answers right, as the harness scores them
    (``acc`` of each logged sample)."""
    from src.modeling import compute_dtype, load_for_inference

    tokenizer, model = load_for_inference(model_dir, compute_dtype("auto"))
    manager = task_manager(params)
    out = run_task(harness_model(model, tokenizer, params), name, params.tasks[name], manager, log_samples=True)
    return [sample["doc"]["question"] for sample in out["samples"][name] if sample["acc"] == 1.0]


def main() -> None:
    from src.config import load_params

    parser = argparse.ArgumentParser(description="The questions of a task a model answers right (a JSON list).")
    parser.add_argument("--right-of", type=Path, required=True, help="a model folder")
    parser.add_argument("--task", default="general_knowledge", help="a name in params.yaml's benchmark.tasks")
    args = parser.parse_args()
    params = load_params().benchmark
    print(json.dumps(right_answers(args.right_of, params, args.task), ensure_ascii=False, indent=0))


if __name__ == "__main__":
    main()
