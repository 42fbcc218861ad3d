"""Stage ``preference_data``: the preference pairs the ``align`` stage learns from: your files
(``align.datasets``) and pairs built from what the pipeline already has, so that the default
needs no downloaded preference data.

Your files: each entry of ``align.datasets`` (a ``.jsonl``, ``.json``, ``.parquet`` or ``.csv``
file in one of the preference formats of src/formats.py: ``preference`` (TRL's), ``ultrafeedback``,
``orca_dpo_pairs``, ``unpaired`` (KTO's), with ``columns``, ``subset_rows``/``subset_fraction``,
``max_chars`` and ``seed`` as in ``datasets``). Rows that cannot become a pair are dropped and
counted by reason (with DPO a row of one answer too, as ``unpaired``); ``align.val_fraction`` of
the prompts, by a stable hash, are held out.

Generated pairs (``align.generated.kinds``; src/pairs.py explains each kind):
- ``base_answer``, ``other_identity``, ``nameless_denial``: each identity record's answer chosen
  over the base model's own answer to the question (asked greedily, at most ``max_new_tokens``),
  over another assistant's identity, and for a denial over a denial that gives no name. Training
  records make training pairs, validation records (templates training never saw) held-out pairs.
- ``leak``: each of the base's answers to an unrelated question (``generate_replay_data``'s
  records) chosen over the same answer with the name and maker worked in; ``val_fraction`` of
  them held out. ``max_pairs`` caps the generated training pairs (a seeded sample).

With ``align.method: none`` the stage writes empty files and loads no model. The pairs per
source, kind and side and the rows left out by reason go to ``paths.preference_metrics``.

    python -m src.stages.preference_data     (or: dvc repro preference_data)
"""

from __future__ import annotations

import logging
from collections import Counter

from src.chat import conversation
from src.cli import run
from src.config import IDENTITY_SOURCE, Params
from src.files import write_json
from src.generation import generate
from src.modeling import load_for_inference, weights_dtype
from src.pairs import held_out, identity_pairs, leak_pairs, read_preference_source, sample
from src.preference import PreferencePair, write_pairs
from src.records import read_jsonl

log = logging.getLogger(__name__)

IDENTITY_KINDS = {"base_answer", "other_identity", "nameless_denial"}


def base_answers(cfg: Params, records: list) -> list[str]:
    """The base model's greedy answers to the records' prompts, as training would ask them."""
    if not records:
        return []
    generated = cfg.align.generated
    tokenizer, model = load_for_inference(cfg.paths.base_model, weights_dtype(cfg.train.precision),
                                          cfg.fetch_base_model.trust_remote_code)
    conversations = [conversation(r.prompt, cfg.chat.system_prompt) for r in records]
    answers = generate(model, tokenizer, conversations, generated.max_new_tokens, generated.batch_size,
                       desc="base answers to identity questions")
    return [a.text for a in answers]


def generated_pairs(cfg: Params) -> tuple[list[PreferencePair], list[PreferencePair], dict]:
    """The generated training and held-out pairs, and their accounting."""
    a, paths = cfg.align, cfg.paths
    kinds = set(a.generated.kinds)
    train, val, dropped = [], [], Counter()
    if kinds & IDENTITY_KINDS:
        splits = {split: list(read_jsonl(paths.split_file(IDENTITY_SOURCE, split))) for split in ("train", "val")}
        answers = base_answers(cfg, splits["train"] + splits["val"]) if "base_answer" in kinds else None
        n = len(splits["train"])
        for split, records in splits.items():
            base = None if answers is None else answers[:n] if split == "train" else answers[n:]
            made, left = identity_pairs(records, base, cfg.generate_identity_data, a.seed)
            (train if split == "train" else val).extend(made)
            dropped.update(left)
    if "leak" in kinds:
        made, left = leak_pairs(list(read_jsonl(paths.replay)), cfg.generate_identity_data, a.seed)
        dropped.update(left)
        for pair in made:
            (val if held_out(pair, a.val_fraction, a.seed) else train).append(pair)
    train, sampled_out = sample(train, a.generated.kinds, a.generated.max_pairs, a.seed)
    val, _ = sample(val, a.generated.kinds, None, a.seed)
    return train, val, {"dropped": dict(sorted(dropped.items())), "sampled_out": sampled_out}


def main(cfg: Params) -> dict:
    a, paths = cfg.align, cfg.paths
    train: list[PreferencePair] = []
    val: list[PreferencePair] = []
    sources: dict[str, dict] = {}
    if a.enabled:
        for source, spec in a.datasets.items():
            pairs, accounting = read_preference_source(spec, source, paired_only=a.method == "dpo")
            held = [held_out(p, a.val_fraction, a.seed) for p in pairs]
            train += [p for p, h in zip(pairs, held) if not h]
            val += [p for p, h in zip(pairs, held) if h]
            sources[source] = {**accounting, "train": held.count(False), "val": held.count(True)}
            log.info("%s: %d pairs from %d rows (%d train, %d held out); dropped %s", spec.path, len(pairs),
                     accounting["rows_in"], held.count(False), held.count(True),
                     {k: v for k, v in accounting["dropped"].items() if v} or "none")
        made_train, made_val, accounting = generated_pairs(cfg)
        train += made_train
        val += made_val
        sources["generated"] = {**accounting, "train": len(made_train), "val": len(made_val)}
    else:
        log.info("align.method is none: no preference pairs")
    write_pairs(paths.preference_train, train)
    write_pairs(paths.preference_val, val)
    kinds = {side: dict(sorted(Counter(p.kind or p.source for p in pairs).items()))
             for side, pairs in (("train", train), ("val", val))}
    metrics = {"method": a.method, "train": len(train), "val": len(val), "by_kind": kinds, "sources": sources}
    write_json(paths.preference_metrics, metrics)
    log.info("%s: %d training pairs %s; %s: %d held out %s", paths.preference_train, len(train), kinds["train"],
             paths.preference_val, len(val), kinds["val"])
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
