"""Stage ``generate_replay_data``: the base model's own answers, trained on beside the new data.

Fine-tuning a small model on a narrow set (identity answers, a few hundred examples) pulls
everything it says toward that set: it forgets facts and names itself where nobody asked.
Self-distillation replay keeps the base model's behaviour on everything else: the base
model answers general prompts, greedily, and those answers join the training set as the
``replay`` source ("Self-Distillation Bridges Distribution Gap in Language Model
Fine-Tuning", Yang et al., ACL 2024). The answers are training data, so they are generated
with the weights in the precision training holds them in (fp32 on CPU, where bf16 is only
autocast): the same answers whether or not the CPU computes in bf16.

The prompts are the questions in ``generate_replay_data.questions`` and the training prompts
of the sources in ``generate_replay_data.sources`` (never their validation prompts), at most
``max_prompts`` of those drawn with ``seed``. Each is asked as training will show it (with
``chat.system_prompt`` when it has no system turn). Answers that end without EOS (cut at
``max_new_tokens``) or are empty are dropped and counted. With ``enabled: false`` the stage
writes an empty file and costs nothing. The mix in ``merge_data`` sets how many replay
records the training set takes; ``train.replay.loss`` how training uses them (``ce``: as
targets; ``kl``: the base's whole next-token distribution on these answers, src/distill.py).

    python -m src.stages.generate_replay_data     (or: dvc repro generate_replay_data)
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from src.chat import conversation
from src.cli import run
from src.config import REPLAY_SOURCE, Params
from src.errors import PipelineError
from src.files import read_yaml, write_json
from src.generation import generate
from src.modeling import load_for_inference, weights_dtype
from src.records import Record, Turn, read_jsonl, turns_key, write_jsonl

log = logging.getLogger(__name__)


def load_questions(path: str | None) -> list[str]:
    if path is None:
        return []
    questions = read_yaml(path)
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise PipelineError(f"{path}: expected a list of non-empty questions")
    return questions


def replay_prompts(questions: list[str], source_prompts: list[list[Turn]], max_prompts: int | None,
                   seed: int) -> tuple[list[list[Turn]], int]:
    """The shipped questions, then up to ``max_prompts`` source prompts (a seeded sample, in file
    order), each normalised prompt once; returns (prompts, how many repeated one already taken)."""
    prompts = [[Turn(role="user", content=q)] for q in questions]
    if max_prompts is not None and len(source_prompts) > max_prompts:
        picked = sorted(random.Random(seed).sample(range(len(source_prompts)), max_prompts))
        source_prompts = [source_prompts[i] for i in picked]
    unique, seen = [], set()
    for prompt in prompts + source_prompts:
        key = turns_key(prompt)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique, len(prompts) + len(source_prompts) - len(unique)


def main(cfg: Params) -> dict:
    p, paths = cfg.generate_replay_data, cfg.paths
    dropped = Counter({"repeated_prompt": 0, "no_eos": 0, "empty": 0})
    records: list[Record] = []
    prompts: list[list[Turn]] = []
    if p.enabled:
        source_prompts = [r.prompt for s in p.sources for r in read_jsonl(paths.split_file(s, "train"))]
        prompts, dropped["repeated_prompt"] = replay_prompts(load_questions(p.questions), source_prompts,
                                                             p.max_prompts, p.seed)
        log.info("asking the base model %d prompts (at most %d new tokens each)", len(prompts), p.max_new_tokens)
        tokenizer, model = load_for_inference(paths.base_model, weights_dtype(cfg.train.precision),
                                              cfg.fetch_base_model.trust_remote_code)
        conversations = [conversation(prompt, cfg.chat.system_prompt) for prompt in prompts]
        answers = generate(model, tokenizer, conversations, p.max_new_tokens, p.batch_size, desc="replay answers")
        for prompt, answer in zip(prompts, answers):
            reason = None if answer.ended_with_eos else "no_eos"
            reason = reason or (None if answer.text else "empty")
            if reason:
                dropped[reason] += 1
                continue
            records.append(Record(prompt=prompt, completion=[Turn(role="assistant", content=answer.text)],
                                  source=REPLAY_SOURCE))
    else:
        log.info("generate_replay_data.enabled is false: no replay records")
    n = write_jsonl(paths.replay, records)
    metrics = {"enabled": p.enabled, "rows_in": len(prompts) + dropped["repeated_prompt"], "rows_out": n,
               "dropped": dict(dropped)}
    write_json(paths.metrics_file("generate_replay_data"), metrics)
    log.info("%s: wrote %d replay records; dropped %s", paths.replay, n, dict(dropped))
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
