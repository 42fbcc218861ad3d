"""Stage ``align``: preference training after SFT, continuing from the SFT adapter with TRL.

``align.method: dpo`` trains the SFT adapter further with TRL's ``DPOTrainer`` on
``preference_data``'s pairs (``align.dpo`` holds trl.DPOConfig's fields: ``beta``,
``loss_type`` such as ``sigmoid`` or ``ipo``, the learning rate...); ``kto`` with ``KTOTrainer``
(``align.kto``), each pair giving a desirable and an undesirable answer and an unpaired row one.
The reference model is the SFT model without a second copy of the weights: TRL copies the SFT
adapter into a frozen ``ref`` adapter beside the trained one, over the same base (quantized on
load for QLoRA, as ``train`` loads it). The trained adapter alone is saved to ``paths.aligned``,
with the tokenizer and the resolved config; ``merge_model`` merges it instead of the SFT adapter.

dvclive (``paths.align_live``) records the trainer's loss, rewards and margins as it trains, and
the run's summary, scored here the same way for every method on the held-out pairs: the reward
accuracy (the share of pairs whose chosen answer gains more log-probability over the reference
than the rejected one), the mean reward margin (that gain, chosen minus rejected, times beta),
and the KL divergence from the reference (the SFT model) per answer token of the chosen answers.
Checkpoints and resume work as in ``train`` (src/checkpoints.py).

With ``align.method: none`` the stage writes only a note that there is no aligned adapter, and
``merge_model`` takes the SFT adapter.

    python -m src.stages.align                     # as dvc repro align runs it
    dvc exp run -S align.method=dpo                # SFT, then DPO on the generated pairs
    dvc exp run -S align.method=kto                # SFT, then KTO on the same pairs
"""

from __future__ import annotations

import logging
from pathlib import Path

from src.checkpoints import ADAPTER_FILE, RunCheckpoints
from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.files import output_folder, write_json
from src.library_configs import (
    align_attention,
    build_preference_config,
    jsonable,
    load_training_base,
    quantization_fields,
)
from src.lineage import data_digests
from src.live_metrics import STUDIO_TOKEN_ENV, LiveMetrics, mean_train_loss, open_live, write_summary
from src.modeling import ALIGN_CONFIG_FILE, device_kind, load_tokenizer, resolve_precision, weights_dtype
from src.preference import PreferencePair, read_pairs

log = logging.getLogger(__name__)

def read_all(path: str) -> list[PreferencePair]:
    pairs = list(read_pairs(path))
    if not pairs:
        raise PipelineError(f"{path}: no preference pairs; add align.datasets or align.generated.kinds, "
                            "or set align.method: none")
    return pairs


def run_checkpoints(cfg: Params) -> RunCheckpoints:
    """This configuration's checkpoints: fingerprinted by the chat, train and align params, the
    pairs, the SFT adapter and the base model."""
    paths = cfg.paths
    return RunCheckpoints(paths.checkpoints, cfg.model_dump(include={"chat", "train", "align"}),
                          {"pairs_train": paths.preference_train, "pairs_val": paths.preference_val,
                           "sft_adapter": str(Path(paths.adapter) / ADAPTER_FILE)},
                          paths.base_model, keep=method_fields(cfg).get("save_total_limit"))


def method_fields(cfg: Params) -> dict:
    """The trainer config fields of ``align.method`` (``align.dpo`` or ``align.kto``)."""
    return cfg.align.dpo if cfg.align.method == "dpo" else cfg.align.kto


def build_model(cfg: Params, config):
    """The base as training loads it, with the SFT adapter on it, trainable."""
    from peft import PeftModel

    precision = resolve_precision(cfg.train.precision)
    quantization = quantization_fields(cfg.train, precision) if cfg.train.quantized else None
    base = load_training_base(cfg, weights_dtype(precision), quantization, align_attention(cfg),
                              config.gradient_checkpointing)
    return PeftModel.from_pretrained(base, cfg.paths.adapter, is_trainable=True)


def answer_scores(model, tokenizer, pair: PreferencePair, system_prompt: str | None) -> dict:
    """For each answer of ``pair``: its log-probability under the policy and the reference (TRL's
    ``ref`` adapter), and for the chosen one the KL divergence from the reference summed over its
    tokens, with their count."""
    import torch
    from trl.trainer.utils import use_adapter

    from src.chat import conversation, supervised_ids

    prompt = conversation(pair.prompt, system_prompt)
    scores = {}
    for side, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ids = supervised_ids(tokenizer, {"prompt": prompt, "completion": [t.model_dump() for t in answer]})
        input_ids = torch.tensor([ids["input_ids"]], device=model.device)
        mask = torch.tensor(ids["assistant_masks"][1:], device=model.device, dtype=torch.bool)  # predicted tokens
        targets = input_ids[0, 1:][mask]
        logps = []
        for adapter in ("default", "ref"):
            with use_adapter(model, adapter), torch.no_grad():
                logps.append(torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].float(), -1)[mask])
        policy, ref = logps
        scores[side] = {"policy": policy.gather(1, targets[:, None]).sum().item(),
                        "ref": ref.gather(1, targets[:, None]).sum().item()}
        if side == "chosen":
            scores["kl"], scores["tokens"] = (policy.exp() * (policy - ref)).sum().item(), int(mask.sum())
    return scores


def held_out_scores(model, tokenizer, pairs: list[PreferencePair], system_prompt: str | None,
                    beta: float) -> dict:
    """Reward accuracy and mean margin (rewards: beta times the log-probability gained over the
    reference) on the held-out pairs, and the KL divergence from the reference per chosen answer token."""
    from tqdm.auto import tqdm

    pairs = [p for p in pairs if p.paired]
    if not pairs or "ref" not in model.peft_config:
        return {"reward_accuracy": None, "reward_margin": None, "kl_to_reference": None}
    model.eval()
    margins, kl, tokens = [], 0.0, 0
    for pair in tqdm(pairs, desc="held-out pairs", unit="pair"):
        s = answer_scores(model, tokenizer, pair, system_prompt)
        margins.append(beta * ((s["chosen"]["policy"] - s["chosen"]["ref"])
                               - (s["rejected"]["policy"] - s["rejected"]["ref"])))
        kl, tokens = kl + s["kl"], tokens + s["tokens"]
    return {"reward_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
            "reward_margin": round(sum(margins) / len(margins), 4), "kl_to_reference": round(kl / tokens, 6)}


def summarize(cfg: Params, trainer, pairs: dict, scores: dict, train_seconds: float, resumed_from: int) -> dict:
    return {
        "method": cfg.align.method,
        **scores,
        "train_loss": mean_train_loss(trainer.state.log_history),
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "pairs_trained": len(pairs["train"]),
        "pairs_held_out": len(pairs["val"]),
        "train_seconds": round(train_seconds, 2),
    }


def save_adapter(cfg: Params, trainer, tokenizer, config, fingerprint: str, summary: dict) -> None:
    """The trained adapter alone (not TRL's frozen ``ref`` copy), the tokenizer and the resolved config."""
    with output_folder(Path(cfg.paths.aligned)) as partial:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(partial, selected_adapters=["default"])
        tokenizer.save_pretrained(partial)
        write_json(partial / ALIGN_CONFIG_FILE, jsonable({
            "params": cfg.model_dump(include={"align"}), cfg.align.method: config.to_dict(), "device": device_kind(),
            "data": data_digests(cfg.paths.preference_train, cfg.paths.preference_val),  # the shipped model's lineage
            "checkpoint_fingerprint": fingerprint, "summary": summary,
        }))


def skip(cfg: Params) -> dict:
    """``align.method: none``: a note in place of the adapter, and metrics that say so."""
    summary = {"method": "none"}
    with output_folder(Path(cfg.paths.aligned)) as partial:  # no params in it: merge_model reruns for none of them
        write_json(partial / ALIGN_CONFIG_FILE, {"summary": summary})
    with output_folder(Path(cfg.paths.align_live)) as partial:
        write_json(partial / "metrics.json", summary)
    log.info("align.method is none: merge_model takes the SFT adapter (%s)", cfg.paths.adapter)
    return summary


def datasets_for(cfg: Params, pairs: dict) -> dict:
    """The trainer's datasets: pairs for DPO; for KTO every answer with its label."""
    from datasets import Dataset

    system_prompt = cfg.chat.system_prompt
    if cfg.align.method == "dpo":
        rows = {side: [p.trl_example(system_prompt) for p in pairs[side]] for side in pairs}
    else:
        rows = {side: [e for p in pairs[side] for e in p.unpaired_examples(system_prompt)] for side in pairs}
    return {side: Dataset.from_list(rows[side]) if rows[side] else None for side in rows}


def main(cfg: Params):
    """Train and save; returns the trainer (tests inspect its model and history), or None with
    ``align.method: none``."""
    if not cfg.align.enabled:  # before the libraries load: a second or two, not ten
        skip(cfg)
        return None
    from trl import DPOTrainer, KTOTrainer

    paths, method = cfg.paths, cfg.align.method
    pairs = {"train": read_all(paths.preference_train), "val": list(read_pairs(paths.preference_val))}
    tokenizer = load_tokenizer(paths.adapter)  # the SFT run's: its chat template puts the system prompt first
    with run_checkpoints(cfg) as checkpoints:
        config = build_preference_config(cfg, output_dir=checkpoints.output_dir)
        log.info("%s on %s: %d training pairs, %d held out", method, device_kind(), len(pairs["train"]),
                 len(pairs["val"]))
        checkpoints.find(config)
        model = build_model(cfg, config)
        live = open_live(paths.align_live, config)
        callbacks = [LiveMetrics(live)]
        data = datasets_for(cfg, pairs)
        trainer_class = DPOTrainer if method == "dpo" else KTOTrainer
        trainer = checkpoints.trainer_class(trainer_class)(
            model=model, args=config, processing_class=tokenizer, train_dataset=data["train"],
            eval_dataset=data["val"] if config.eval_strategy != "no" else None, callbacks=callbacks)
        train_seconds = checkpoints.train(trainer, callbacks)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        scores = held_out_scores(unwrapped, tokenizer, pairs["val"], cfg.chat.system_prompt, config.beta)
        summary = summarize(cfg, trainer, pairs, scores, train_seconds, checkpoints.resumed_from_step)
        if live is not None:
            write_summary(live, summary)
            save_adapter(cfg, trainer, tokenizer, config, checkpoints.fingerprint, summary)
            checkpoints.clean_up()
        log.info("wrote %s: %d steps; held out: reward accuracy %s, margin %s, KL to the SFT model %s per token",
                 paths.aligned, summary["steps"], summary["reward_accuracy"], summary["reward_margin"],
                 summary["kl_to_reference"])
        return trainer


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, secrets=("DVC_STUDIO_TOKEN", STUDIO_TOKEN_ENV)))  # live metrics
