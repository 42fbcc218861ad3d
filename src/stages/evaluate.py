"""Stage ``evaluate``: base vs fine-tuned, as DVC metrics that ``dvc exp show`` compares.

Every question is asked greedily with no system message, through each model folder's own
chat template, as any client (transformers, llama.cpp, Ollama, vLLM) asks it, and its answer
scored by src/scoring.py (src/evaluation.py asks). The base model's answers and metrics come from
``paths.evaluation_base`` (the ``evaluate_base`` stage: they depend on the base, the validation
set and the questions, not on training); the fine-tuned model's are asked here:

* ``val_loss``: assistant-turn loss on the whole validation set (scored by TRL as in training);
* ``identity_accuracy`` (strict) on the held-out identity questions: the validation set's
  identity records (whole templates that training never saw) and the wordings of
  ``evaluate.identity_questions`` (used by no template). A question that names another
  assistant or maker counts only when the answer denies it and gives the true name; any other
  counts only when the answer names what is asked (the name, the creator; for a validation
  record, what its reference answer names); no answer may name an assistant or maker the
  question did not mention. ``identity_accuracy_templates`` and ``identity_accuracy_unseen``
  are the two parts;
* ``identity_leak_rate``: the share of answers to non-identity questions (the retention
  probes and the other sources' validation prompts) that name the assistant or its creator
  unasked;
* ``retention``: of the retention probes (``evaluate.retention_probes``, short questions with
  checkable answers) the base model knows, the share the fine-tuned model still answers right.
  The base knows a probe when it answers it right both through its own template and with
  ``chat.system_prompt`` first (the conversation the fine-tuned model's template builds): an
  answer that one system prompt wording flips is luck, not knowledge, and losing it is not
  forgetting (on the default, the base alone kept 0.84 of its own right answers when only its
  system prompt changed);
* ``eos_rate``: the share of identity answers (short by design) that end with EOS rather than
  at ``max_new_tokens``: the model learned to stop. ``probe_eos_rate`` is the same over the
  probe answers, for information only: a model that kept the base's long-winded answers
  (the base stops within the limit on about 60% of them) is not failing to stop.

Every answer goes to ``paths.evaluation_answers`` (JSON Lines) for a look by hand, and the
count of evaluation and sanity prompts that occur in the training set to
``eval_prompts_in_train`` (0 unless someone trained on the test).

``paths.evaluation`` opens with the headline, the first columns of ``dvc exp show``: the
fine-tuned model's ``val_loss``, ``identity_accuracy``, ``identity_leak_rate``, ``retention``
and ``eos_rate``, and training's ``train_tokens_per_s`` and ``train_minutes`` (from the train
stage's metrics). Then each model's metrics under ``base`` and ``finetuned``, the counts, and
``base_vs_finetuned``: the same per-model metrics as rows for ``dvc plots show``'s chart.

    python -m src.stages.evaluate
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from src.cli import run
from src.config import IDENTITY_SOURCE, Params
from src.errors import PipelineError
from src.evaluation import known, load_answers, questions, retention, score
from src.files import open_atomic, read_json, write_json
from src.records import Record, normalise, prompt_key, read_jsonl
from src.scoring import IdentityCheck, Probe, identity_checks, load_probes

log = logging.getLogger(__name__)

def prompts_in_train(train_path: str, questions: list[str]) -> int:
    """How many of ``questions`` occur (normalised) as a user turn of a training record."""
    seen = {prompt_key(r) for r in read_jsonl(train_path)}
    return sum(normalise(q) in seen for q in questions)


def write_answers(path: str, val: list[Record], unseen: list[IdentityCheck], probes: list[Probe], base: dict,
                  tuned: dict, base_knows: list[bool]) -> None:
    """Every question with both answers, one JSON object a line, for a look by hand (a probe also
    with the base's answer under ``chat.system_prompt``, when it was asked one)."""
    identity = [r for r in val if r.source == IDENTITY_SOURCE]
    other = [r for r in val if r.source != IDENTITY_SOURCE]
    rows = [{"kind": "identity", "question": r.prompt[-1].content} for r in identity]
    rows += [{"kind": "identity/unseen", "question": c.question} for c in unseen]
    probe_rows = [{"kind": f"probe/{p.kind}", "question": p.question, "base_knows": k, "base_right": p.right(b.text),
                   "finetuned_right": p.right(t.text)}
                  for p, k, b, t in zip(probes, base_knows, base["probes"], tuned["probes"])]
    if "probes_system" in base:  # asked only when chat.system_prompt is set
        for row, answer in zip(probe_rows, base["probes_system"], strict=True):
            row["base_with_system_prompt"] = answer.text
    rows += probe_rows + [{"kind": r.source, "question": r.prompt[-1].content} for r in other]
    kinds = ("identity", "unseen", "probes", "other")
    base_all = [a for k in kinds for a in base[k]]
    tuned_all = [a for k in kinds for a in tuned[k]]
    with open_atomic(path) as f:
        for row, b, t in zip(rows, base_all, tuned_all, strict=True):
            row |= {"base": b.text, "base_eos": b.ended_with_eos,
                    "finetuned": t.text, "finetuned_eos": t.ended_with_eos}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# The per-model metrics ``dvc plots show`` draws side by side (dvc.yaml's plot
# ``base_vs_finetuned``), in words, in this order.
CHARTED = (("validation loss", "val_loss"), ("identity accuracy", "identity_accuracy"),
           ("identity accuracy: held-out templates", "identity_accuracy_templates"),
           ("identity accuracy: unseen wordings", "identity_accuracy_unseen"),
           ("answers that give the name", "identity_name_rate"), ("identity leak rate", "identity_leak_rate"),
           ("probe accuracy, all retention probes", "probe_accuracy"), ("EOS rate, identity answers", "eos_rate"),
           ("EOS rate, probe answers", "probe_eos_rate"))


def headline(tuned: dict, kept: float, train_metrics: dict, source: str) -> dict:
    """What the table of ``dvc exp show`` shows first (dvc.yaml lists this file first among the
    metrics): the fine-tuned model's val loss, identity accuracy, leak rate, retention and EOS
    rate, then training's tokens per second and minutes from ``train_metrics`` (read from
    ``source``, the train stage's metrics), under names of their own: a name that two metrics
    files share becomes ``<file>:<name>`` in that table, too wide to fit."""
    missing = [key for key in ("tokens_per_second", "train_seconds") if key not in train_metrics]
    if missing:
        raise PipelineError(f"{source}: no {', '.join(missing)} (rerun the train stage)")
    return {"val_loss": tuned["val_loss"], "identity_accuracy": tuned["identity_accuracy"],
            "identity_leak_rate": tuned["identity_leak_rate"], "retention": kept, "eos_rate": tuned["eos_rate"],
            "train_tokens_per_s": train_metrics["tokens_per_second"],
            "train_minutes": round(train_metrics["train_seconds"] / 60, 2)}


def chart_rows(base: dict, tuned: dict) -> list[dict]:
    """``CHARTED`` for both models, one row a metric and model: the only list in the file, which
    DVC's plots read as their data (and its metrics skip)."""
    return [{"metric": label, "model": model, "value": scores[key]}
            for label, key in CHARTED for model, scores in (("base", base), ("fine-tuned", tuned))]


def results(base: dict, tuned: dict, kept: float, train_metrics: dict, source: str, **counts: int) -> dict:
    """What ``paths.evaluation`` holds: the headline first, each model's metrics, the val loss
    change, ``counts`` and the chart's rows."""
    return {**headline(tuned, kept, train_metrics, source), "base": base, "finetuned": tuned,
            "val_loss_delta": round(tuned["val_loss"] - base["val_loss"], 4), **counts,
            "base_vs_finetuned": chart_rows(base, tuned)}


def main(cfg: Params) -> dict:
    paths = cfg.paths
    train_source = Path(paths.train_live) / "metrics.json"
    train_metrics = read_json(train_source)
    val = list(read_jsonl(paths.val))
    if not val:
        raise PipelineError(f"{paths.val}: no validation records")
    probes = load_probes(cfg.evaluate.retention_probes)
    unseen = identity_checks(cfg.evaluate.identity_questions, cfg.generate_identity_data)
    n_identity = sum(r.source == IDENTITY_SOURCE for r in val)
    asked = ([r.prompt[-1].content for r in val] + [c.question for c in unseen] + [p.question for p in probes]
             + cfg.sanity_check.prompts)
    in_train = prompts_in_train(paths.train, asked)
    if in_train:
        log.warning("%d of the %d evaluation and sanity prompts occur in %s: those measure recall, not "
                    "generalisation", in_train, len(asked), paths.train)
    log.info("scoring %d validation records (%d held-out identity templates), %d unseen identity wordings and "
             "%d retention probes", len(val), n_identity, len(unseen), len(probes))
    base, base_answers = load_answers(paths.evaluation_base, questions(val, unseen, probes))
    tuned, tuned_answers = score(paths.merged_model, cfg, val, unseen, probes, "fine-tuned")
    base_knows = known(probes, base_answers)
    kept, n_known = retention(probes, base_knows, tuned_answers["probes"])
    metrics = results(base, tuned, kept, train_metrics, str(train_source), probes_base_knows=n_known,
                      probes=len(probes), identity_questions=n_identity + len(unseen), validation_records=len(val),
                      eval_prompts_in_train=in_train)
    write_answers(paths.evaluation_answers, val, unseen, probes, base_answers, tuned_answers, base_knows)
    write_json(paths.evaluation, metrics)
    log.info("val loss %.4f -> %.4f; identity accuracy %.2f -> %.2f; leak rate %.2f -> %.2f; retention %.2f "
             "(of %d probes the base knows); EOS rate %.2f -> %.2f",
             base["val_loss"], tuned["val_loss"], base["identity_accuracy"], tuned["identity_accuracy"],
             base["identity_leak_rate"], tuned["identity_leak_rate"], kept, n_known,
             base["eos_rate"], tuned["eos_rate"])
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
