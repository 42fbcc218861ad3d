"""Stage ``evaluate``: base vs fine-tuned, as DVC metrics that ``dvc exp show`` compares.

* validation loss and perplexity on the whole validation set (completion tokens only,
  scored by TRL exactly as in training);
* identity accuracy on the held-out identity questions: the answer names the
  configured name (and creator, where the reference answer does) and no other
  assistant or maker that the question did not mention;
* the share of those answers that end with EOS rather than at ``max_new_tokens``.

    python -m src.stages.evaluate
"""

from __future__ import annotations

import logging
import math
import tempfile

from src.chat import conversation, training_example
from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.generation import generate
from src.modeling import device_kind, load_for_inference
from src.records import Record, read_jsonl, write_json

log = logging.getLogger(__name__)

IDENTITY_SOURCE = "identity"


def identity_correct(question: str, reference: str, answer: str, name: str, creator: str,
                     others: list[str]) -> bool:
    """Configured terms the reference names are in the answer; unasked-for other names are not."""
    q, ref, ans = question.casefold(), reference.casefold(), answer.casefold()
    for term in (name, creator):
        if term.casefold() in ref and term.casefold() not in ans:
            return False
    return not any(o.casefold() in ans and o.casefold() not in q for o in others)


def validation_loss(model, tokenizer, examples: list[dict], cfg: Params) -> float:
    """Mean completion-token loss, computed by TRL as during training."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", use_cpu=device_kind() == "cpu",
                         bf16=False, fp16=False, max_length=cfg.train.sft.get("max_length", 1024),
                         per_device_eval_batch_size=cfg.train.sft.get("per_device_eval_batch_size", 8))
        data = Dataset.from_list(examples)  # TRL insists on a train set; nothing is trained
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=data, eval_dataset=data)
        return float(trainer.evaluate()["eval_loss"])


def score(model_dir: str, cfg: Params, val: list[Record], label: str) -> dict:
    ev, ident = cfg.evaluate, cfg.generate_identity_data
    tokenizer, model = load_for_inference(model_dir, cfg.train.precision, cfg.fetch_base_model.trust_remote_code)
    loss = validation_loss(model, tokenizer, [training_example(r, cfg.chat.system_prompt) for r in val], cfg)
    identity = [r for r in val if r.source == IDENTITY_SOURCE]
    answers = generate(model, tokenizer, [conversation(r.prompt, cfg.chat.system_prompt) for r in identity],
                       ev.max_new_tokens, ev.batch_size, desc=f"{label}: identity questions")
    others = [t for o in ident.others for t in (o.name, o.creator)]
    correct = [identity_correct(r.prompt[-1].content, r.completion[-1].content, a.text,
                                ident.name, ident.creator, others) for r, a in zip(identity, answers)]
    named = [ident.name.casefold() in a.text.casefold() for a in answers]
    n = max(len(answers), 1)
    return {"val_loss": round(loss, 4), "val_perplexity": round(math.exp(min(loss, 50.0)), 3),
            "identity_accuracy": round(sum(correct) / n, 4),
            "identity_name_rate": round(sum(named) / n, 4),
            "eos_rate": round(sum(a.ended_with_eos for a in answers) / n, 4)}


def main(cfg: Params) -> dict:
    paths = cfg.paths
    val = list(read_jsonl(paths.val))
    if not val:
        raise PipelineError(f"{paths.val}: no validation records")
    n_identity = sum(r.source == IDENTITY_SOURCE for r in val)
    log.info("scoring %d validation records (%d held-out identity questions)", len(val), n_identity)
    base = score(paths.base_model, cfg, val, "base")
    tuned = score(paths.merged_model, cfg, val, "fine-tuned")
    metrics = {"base": base, "finetuned": tuned,
               "val_loss_delta": round(tuned["val_loss"] - base["val_loss"], 4),
               "identity_questions": n_identity, "validation_records": len(val)}
    write_json(paths.evaluation, metrics)
    log.info("val loss %.4f -> %.4f; identity accuracy %.2f -> %.2f; EOS rate %.2f -> %.2f",
             base["val_loss"], tuned["val_loss"], base["identity_accuracy"], tuned["identity_accuracy"],
             base["eos_rate"], tuned["eos_rate"])
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
