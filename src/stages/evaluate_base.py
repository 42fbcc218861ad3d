"""Stage ``evaluate_base``: the base model asked the evaluation's questions, once.

The base's answers and metrics depend only on the base model, the validation set, the questions
(``evaluate.retention_probes``, ``evaluate.identity_questions``) and how they are asked (the
``evaluate`` and ``chat`` params), not on training: kept in ``paths.evaluation_base``, they let a
training change (another seed, another learning rate) rerun only the fine-tuned half of the
evaluation. The probes are asked twice, through the base's own template and with
``chat.system_prompt`` first: ``evaluate`` counts a probe as known when both answers are right.

    python -m src.stages.evaluate_base
"""

from __future__ import annotations

import logging

from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.evaluation import questions, save_answers, score
from src.records import read_jsonl
from src.scoring import identity_checks, load_probes

log = logging.getLogger(__name__)


def main(cfg: Params) -> dict:
    paths = cfg.paths
    val = list(read_jsonl(paths.val))
    if not val:
        raise PipelineError(f"{paths.val}: no validation records")
    probes = load_probes(cfg.evaluate.retention_probes)
    unseen = identity_checks(cfg.evaluate.identity_questions, cfg.generate_identity_data)
    log.info("asking the base model %d validation prompts, %d unseen identity wordings and %d retention probes",
             len(val), len(unseen), len(probes))
    metrics, answers = score(paths.base_model, cfg, val, unseen, probes, "base", base=True)
    save_answers(paths.evaluation_base, metrics, answers, questions(val, unseen, probes))
    log.info("base: val loss %.4f, identity accuracy %.2f, probe accuracy %.2f",
             metrics["val_loss"], metrics["identity_accuracy"], metrics["probe_accuracy"])
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
