"""Stage ``benchmark_base``: the base model's scores on ``benchmark.tasks`` through
lm-evaluation-harness (src/benchmarking.py), with the harness's standard errors.

They depend on the base model, the tasks and the precision alone, so a change to the data or to
training does not rerun this stage: ``benchmark`` scores the fine-tuned model and sets it beside
these. Writes ``paths.benchmark_base``.

    python -m src.stages.benchmark_base
"""

from __future__ import annotations

from src.benchmarking import harness_version, score_folder
from src.cli import run
from src.config import Params
from src.files import write_json


def main(cfg: Params) -> dict:
    scores = score_folder(cfg.paths.base_model, cfg)
    write_json(cfg.paths.benchmark_base, {"harness": f"lm-eval {harness_version()}", "tasks": scores})
    return scores


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, needs=("sklearn",)))  # lm-eval's F1 and MCC
