"""Stage ``train``: fine-tune a LoRA adapter with TRL (QLoRA when ``train.quantization.load_in_4bit``).

Records go through the tokenizer's chat template in TRL's prompt/completion form,
so the loss falls on the assistant's answer and its end-of-turn token only.
Writes the adapter (safetensors), the tokenizer and the resolved config to
``paths.adapter``, and dvclive metrics and plots to ``paths.train_live``.

    python -m src.stages.train                     # as dvc repro train runs it
    dvc exp run -S train.sft.learning_rate=5.0e-4  # a CPU experiment
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

from src.chat import training_example
from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.modeling import TRAIN_CONFIG_FILE, compute_dtype, device_kind, load_model, load_tokenizer
from src.records import read_jsonl, write_json

log = logging.getLogger(__name__)


def build_configs(cfg: Params, output_dir: str):
    """The library configs from params; a wrong field fails here, naming its key."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    tc = cfg.train
    dtype = compute_dtype(tc.precision)
    on_cpu = device_kind() == "cpu"
    quantization = dict(tc.quantization)  # checked even when off, so a typo fails today
    if quantization.get("bnb_4bit_compute_dtype") == "auto":
        quantization["bnb_4bit_compute_dtype"] = str(dtype).removeprefix("torch.")
    built = {}
    for key, make, fields in (
        ("quantization", BitsAndBytesConfig, quantization),
        ("lora", LoraConfig, dict(tc.lora)),
        ("sft", SFTConfig, {
            **tc.sft, "output_dir": output_dir, "report_to": "none", "use_cpu": on_cpu,
            "bf16": str(dtype) == "torch.bfloat16", "fp16": str(dtype) == "torch.float16",
            "seed": tc.seed, "save_only_model": False, "include_num_input_tokens_seen": "non_padding",
        }),
    ):
        try:
            built[key] = make(**fields)
        except (TypeError, ValueError) as err:
            raise PipelineError(f"params.yaml: train.{key}: {err}") from err
    return dtype, quantization if tc.quantized else None, built["lora"], built["sft"]


def jsonable(data: dict) -> dict:
    """Library configs hold sets and enums; write them as sorted lists and strings."""
    return json.loads(json.dumps(data, default=lambda o: sorted(o) if isinstance(o, (set, frozenset))
                                 else str(o)))


def load_examples(path: str, system_prompt: str | None) -> list[dict]:
    examples = [training_example(r, system_prompt) for r in read_jsonl(path)]
    if not examples:
        raise PipelineError(f"{path}: no records to train on")
    return examples


def token_lengths(tokenizer, examples: list[dict]) -> list[int]:
    """Full length in tokens of each example as the chat template renders it."""
    return [len(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=True,
                                              return_dict=True)["input_ids"]) for e in examples]


LIVE_KEYS = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mean_token_accuracy")


def make_callbacks(live):
    """Tokens/s on every training log, and dvclive plots keyed by optimizer step."""
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        """Adds tokens/s (of the non-padding tokens the model computed on) to every training log."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = (time.perf_counter(), 0.0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "num_tokens" not in logs or "loss" not in logs:
                return
            now, tokens = time.perf_counter(), float(logs["num_tokens"])
            then, before = self.last
            if now > then:
                logs["tokens_per_second"] = round((tokens - before) / (now - then), 2)
            self.last = (now, tokens)

    class LiveMetrics(TrainerCallback):
        """train/* and eval/* series in dvclive, one row per logged optimizer step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            prefix = "eval" if "eval_loss" in logs else "train" if "loss" in logs else None
            if prefix is None:  # the end-of-training summary: written by main
                return
            live.step = state.global_step
            for key, value in logs.items():
                name = key.removeprefix("eval_")
                if name in LIVE_KEYS and isinstance(value, (int, float)):
                    live.log_metric(f"{prefix}/{name}", value)
            live.make_summary()

    return [Throughput(), LiveMetrics()]


def main(cfg: Params):
    """Train and save; returns the trainer (tests inspect its model and history)."""
    import torch
    from datasets import Dataset
    from dvclive import Live
    from peft import prepare_model_for_kbit_training
    from trl import SFTTrainer

    paths, tc = cfg.paths, cfg.train
    checkpoints, adapter_dir = Path(paths.checkpoints), Path(paths.adapter)
    dtype, quantization, lora_config, sft_config = build_configs(cfg, str(checkpoints))
    log.info("training on %s in %s%s", device_kind(), str(dtype).removeprefix("torch."),
             " with 4-bit/8-bit base weights" if quantization else "")

    # Data: every record through the chat template, prompt and completion apart.
    tokenizer = load_tokenizer(paths.base_model, cfg.fetch_base_model.trust_remote_code)
    train_examples = load_examples(paths.train, cfg.chat.system_prompt)
    val_examples = load_examples(paths.val, cfg.chat.system_prompt)
    eval_examples = random.Random(tc.seed).sample(val_examples, min(tc.eval_records, len(val_examples)))
    lengths = token_lengths(tokenizer, train_examples)
    max_length = sft_config.max_length
    truncated = sum(n > max_length for n in lengths) if max_length else 0
    log.info("%d training records (%d tokens, %d longer than max_length %s and truncated); "
             "%d of %d validation records scored during training",
             len(train_examples), sum(lengths), truncated, max_length, len(eval_examples), len(val_examples))

    # Model: frozen base (quantized on load for QLoRA), LoRA adapter on top.
    torch.manual_seed(tc.seed)
    model = load_model(paths.base_model, dtype, quantization, cfg.fetch_base_model.trust_remote_code)
    if quantization:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=sft_config.gradient_checkpointing)

    # Checkpoints of an earlier run would be mistaken for this run's; start clean.
    if checkpoints.exists():
        log.info("removing earlier checkpoints in %s", checkpoints)
        shutil.rmtree(checkpoints)
    live = Live(paths.train_live, dvcyaml=None, save_dvc_exp=False, report=None)
    trainer = SFTTrainer(
        model=model, args=sft_config, processing_class=tokenizer, peft_config=lora_config,
        train_dataset=Dataset.from_list(train_examples), eval_dataset=Dataset.from_list(eval_examples),
        callbacks=make_callbacks(live),
    )
    dropped = len(train_examples) - len(trainer.train_dataset)
    if len(trainer.train_dataset) == 0:
        raise PipelineError(f"{paths.train}: no record keeps a completion token within max_length {max_length}")
    trainer.model.print_trainable_parameters()

    # Train.
    result = trainer.train()

    # Save: adapter and tokenizer, with the resolved config beside them.
    trainer.model.save_pretrained(adapter_dir)  # adapter weights as safetensors, and its config
    tokenizer.save_pretrained(adapter_dir)
    history = trainer.state.log_history
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in history)
    train_seconds = result.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen  # non-padding tokens the model computed on
    summary = {
        "train_loss": result.training_loss,
        "eval_loss": next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None),
        "steps": trainer.state.global_step,
        "records": len(train_examples),
        "records_truncated": truncated,
        "records_dropped_no_completion_left": dropped,
        "tokens_trained": int(tokens),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_time_share": round(eval_seconds / train_seconds, 4) if train_seconds else 0.0,
        "tokens_per_second": round(tokens / train_seconds, 2) if train_seconds else 0.0,
    }
    for key, value in summary.items():
        if value is not None:
            live.summary[key] = value
    live.make_summary()
    live.end()
    write_json(adapter_dir / TRAIN_CONFIG_FILE, jsonable({
        "params": cfg.model_dump(include={"fetch_base_model", "chat", "train"}),
        "sft": sft_config.to_dict(), "lora": lora_config.to_dict(),
        "quantization": quantization, "device": device_kind(), "summary": summary,
    }))
    log.info("wrote %s: %d steps, train loss %.4f, eval loss %s, evaluation took %.1f%% of training time",
             adapter_dir, summary["steps"], summary["train_loss"], summary["eval_loss"],
             100 * summary["eval_time_share"])
    return trainer


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
