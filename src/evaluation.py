"""One model asked the evaluation's questions and scored (src/scoring.py), for the
``evaluate_base`` stage (the base model, once per base, data and questions) and ``evaluate`` (the
fine-tuned model, beside the base's cached answers).

Every question is asked greedily with no system message, through the model folder's own chat
template; the base also with ``chat.system_prompt`` first (``probes_system``), which decides
which probes it knows. The base's metrics and answers are kept in ``paths.evaluation_base``
(``save_answers``, ``load_answers``): a training change reruns only the fine-tuned half.
"""

from __future__ import annotations

import math
import tempfile

from src.chat import conversation, supervised_ids, training_example
from src.config import IDENTITY_SOURCE, Params
from src.errors import PipelineError
from src.files import read_json, write_json
from src.generation import Answer, generate
from src.modeling import compute_dtype, device_kind, load_for_inference
from src.records import Record
from src.scoring import (
    IdentityCheck,
    Probe,
    identity_correct,
    leaks,
    mentions,
    other_terms,
    record_check,
    share,
)

SCORING_SFT_KEYS = ("max_length", "per_device_eval_batch_size")


def validation_loss(model, tokenizer, examples: list[dict], cfg: Params) -> float:
    """Mean loss on the assistant turns, computed by TRL as during training."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # the length limit and eval batch size training used: train.sft's when set, else TRL's own
    # default, as SFTConfig(**train.sft) gives training (train.sft is free-form: no key is certain)
    as_training = {key: cfg.train.sft[key] for key in SCORING_SFT_KEYS if key in cfg.train.sft}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", use_cpu=device_kind() == "cpu",
                         bf16=False, fp16=False, **as_training)
        # TRL insists on a train set; nothing is trained
        data = Dataset.from_list([supervised_ids(tokenizer, e) for e in examples])
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=data, eval_dataset=data)
        return float(trainer.evaluate()["eval_loss"])


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def score(model_dir: str, cfg: Params, val: list[Record], unseen: list[IdentityCheck], probes: list[Probe],
          label: str, base: bool = False) -> tuple[dict, dict]:
    """One model's metrics, and its answers by kind (``identity`` (the validation records'),
    ``unseen`` (``evaluate.identity_questions``), ``probes``, ``other``; for the ``base``, also
    ``probes_system``: the probes asked with ``chat.system_prompt`` first)."""
    ev, ident = cfg.evaluate, cfg.generate_identity_data
    tokenizer, model = load_for_inference(model_dir, compute_dtype(cfg.train.precision),
                                          cfg.fetch_base_model.trust_remote_code)
    loss = validation_loss(model, tokenizer, [training_example(r, cfg.chat.system_prompt) for r in val], cfg)
    identity = [r for r in val if r.source == IDENTITY_SOURCE]
    other = [r for r in val if r.source != IDENTITY_SOURCE]
    asked = {"identity": [[t.model_dump() for t in r.prompt] for r in identity],
             "unseen": [user_turn(c.question) for c in unseen],
             "probes": [user_turn(p.question) for p in probes],
             "other": [[t.model_dump() for t in r.prompt] for r in other]}
    if base and cfg.chat.system_prompt is not None:
        asked["probes_system"] = [conversation(user_turn(p.question), cfg.chat.system_prompt) for p in probes]
    answers = generate(model, tokenizer, [c for kind in asked.values() for c in kind], ev.max_new_tokens,
                       ev.batch_size, desc=f"{label}: answers")
    by_kind, start = {}, 0
    for kind, conversations in asked.items():
        by_kind[kind], start = answers[start:start + len(conversations)], start + len(conversations)
    others = other_terms(ident)
    templates = [identity_correct(record_check(r, ident), a.text, others)
                 for r, a in zip(identity, by_kind["identity"])]
    worded = [identity_correct(c, a.text, others) for c, a in zip(unseen, by_kind["unseen"])]
    identity_answers = by_kind["identity"] + by_kind["unseen"]
    non_identity = [(p.question, a) for p, a in zip(probes, by_kind["probes"])]
    non_identity += [(r.prompt[-1].content, a) for r, a in zip(other, by_kind["other"])]
    metrics = {
        "val_loss": round(loss, 4), "val_perplexity": round(math.exp(min(loss, 50.0)), 3),
        "identity_accuracy": share(templates + worded),
        "identity_accuracy_templates": share(templates), "identity_accuracy_unseen": share(worded),
        "identity_name_rate": share([mentions(a.text, ident.name) for a in identity_answers]),
        "identity_leak_rate": share([leaks(q, a.text, ident.name, ident.creator) for q, a in non_identity]),
        "probe_accuracy": share([p.right(a.text) for p, a in zip(probes, by_kind["probes"])]),
        "eos_rate": share([a.ended_with_eos for a in identity_answers]),
        "probe_eos_rate": share([a.ended_with_eos for a in by_kind["probes"]]),
    }
    return metrics, by_kind


def known(probes: list[Probe], base: dict[str, list[Answer]]) -> list[bool]:
    """Per probe, whether the base knows it: right through its own template, and right with
    ``chat.system_prompt`` too where one is set."""
    ways = [base["probes"]] + ([base["probes_system"]] if "probes_system" in base else [])
    return [all(p.right(answers[i].text) for answers in ways) for i, p in enumerate(probes)]


def retention(probes: list[Probe], known: list[bool], tuned: list[Answer]) -> tuple[float, int]:
    """The share of the probes the base knows that the fine-tuned model answers right, and how
    many the base knows (1.0 when it knows none)."""
    kept = [p.right(t.text) for p, k, t in zip(probes, known, tuned) if k]
    return (round(sum(kept) / len(kept), 4) if kept else 1.0), len(kept)


def questions(val: list[Record], unseen: list[IdentityCheck], probes: list[Probe]) -> dict[str, list[str]]:
    """The last user turn of every question, by kind, as the answers are kept."""
    return {"identity": [r.prompt[-1].content for r in val if r.source == IDENTITY_SOURCE],
            "unseen": [c.question for c in unseen], "probes": [p.question for p in probes],
            "other": [r.prompt[-1].content for r in val if r.source != IDENTITY_SOURCE]}


def save_answers(path: str, metrics: dict, answers: dict[str, list[Answer]], asked: dict[str, list[str]]) -> None:
    """A model's metrics and its answers by kind, with the questions they answer."""
    write_json(path, {"metrics": metrics, "questions": asked,
                      "answers": {kind: [vars(a) for a in found] for kind, found in answers.items()}})


def load_answers(path: str, asked: dict[str, list[str]]) -> tuple[dict, dict[str, list[Answer]]]:
    """What ``save_answers`` wrote, if it answers exactly ``asked``; else one line."""
    kept = read_json(path)
    if kept.get("questions") != asked or set(kept.get("answers", {})) < set(asked):
        raise PipelineError(f"{path}: the base's answers are to other questions than these "
                            "(rerun the evaluate_base stage: dvc repro evaluate_base)")
    return kept["metrics"], {kind: [Answer(**a) for a in found] for kind, found in kept["answers"].items()}
