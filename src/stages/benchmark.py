"""Stage ``benchmark``: the fine-tuned (merged) model on ``benchmark.tasks``, beside the base's
scores from ``benchmark_base``: per task both scores with their standard errors, the change in
points and its standard error; the mean change and the largest drop (the headline of
``dvc exp show``; ``quality_gate.max_benchmark_drop`` bounds the mean drop). Writes
``paths.benchmark`` (a DVC metric; its ``base_vs_finetuned`` rows are a plot).

    python -m src.stages.benchmark
"""

from __future__ import annotations

import logging

from src.benchmarking import compare, harness_version, score_folder
from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.files import read_json, write_json

log = logging.getLogger(__name__)


def main(cfg: Params) -> dict:
    base = read_json(cfg.paths.benchmark_base)
    missing = sorted(set(cfg.benchmark.tasks) - set(base["tasks"]))
    if missing:
        raise PipelineError(f"{cfg.paths.benchmark_base}: no base scores for {', '.join(missing)} "
                            "(rerun benchmark_base)")
    result = compare(base["tasks"], score_folder(cfg.paths.merged_model, cfg))
    write_json(cfg.paths.benchmark, {"harness": f"lm-eval {harness_version()}", **result})
    if result["tasks"]:
        log.info("benchmark: mean change %+.2f points, worst %+.2f", result["mean_delta_points"],
                 result["worst_delta_points"])
    return result


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, needs=("sklearn",)))  # lm-eval's F1 and MCC
