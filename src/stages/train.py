"""Stage ``train``: fine-tune a LoRA adapter with TRL (QLoRA when ``train.quantization.load_in_4bit``).

Records go through the tokenizer's chat template (src/chat.py's ``supervised_ids``), so the
loss falls on the assistant's turns and their end-of-turn tokens only: every reply of a
multi-turn conversation, never a system or user turn.
Writes the adapter (safetensors), the tokenizer and the resolved config to
``paths.adapter``, and dvclive metrics and plots to ``paths.train_live``.

Checkpoints (adapter, optimizer, scheduler, RNG states, data position) are written every
``train.sft.save_steps`` under ``paths.checkpoints`` or ``$TRAIN_CHECKPOINT_DIR``; a stopped
run started again resumes from the newest complete one of the same configuration
(see src/checkpoints.py), and its dvclive series continue from the checkpoint's history.

    python -m src.stages.train                     # as dvc repro train runs it
    dvc exp run -S train.sft.learning_rate=5.0e-4  # a CPU experiment
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

from src.budget import BudgetStop
from src.chat import with_system_prompt
from src.checkpoints import RunCheckpoints
from src.cli import run
from src.config import Params
from src.distill import replay_rows, with_replay_kl
from src.distributed import relaunch_if_needed
from src.errors import PipelineError
from src.files import output_folder, write_json
from src.library_configs import LibraryConfigs, build_configs, jsonable, load_training_base
from src.lineage import data_digests
from src.live_metrics import STUDIO_TOKEN_ENV, LiveMetrics, Throughput, mean_train_loss, open_live, write_summary
from src.modeling import TRAIN_CONFIG_FILE, device_kind, load_tokenizer
from src.throughput import autocast_flex_attention, score_labelled_positions_only
from src.training_data import load_examples, tokenize

log = logging.getLogger(__name__)


def sequences_in(dataset) -> int:
    """Examples in TRL's prepared dataset: a packed row lists the lengths of the sequences it holds."""
    if "seq_lengths" in dataset.column_names:
        return sum(len(lengths) for lengths in dataset["seq_lengths"])
    return len(dataset)


def select_by_length(examples: list[dict], lengths: list[int], max_length: int | None, over_length: str,
                     path: str) -> tuple[list[dict], int, int]:
    """Apply ``train.over_length`` to records longer than ``max_length`` tokens:
    ``truncate`` keeps them (TRL cuts them), ``drop`` leaves them out.
    Returns (kept examples, truncated count, dropped count)."""
    long = [n > max_length for n in lengths] if max_length else [False] * len(lengths)
    if over_length == "truncate":
        return examples, sum(long), 0
    kept = [e for e, is_long in zip(examples, long) if not is_long]
    if not kept:
        raise PipelineError(f"{path}: all {len(examples)} records are longer than train.sft.max_length "
                            f"{max_length} and train.over_length is drop; raise max_length or truncate")
    return kept, 0, len(examples) - len(kept)


def keep_with_completion(examples: list[dict], max_length: int | None, over_length: str,
                         path: str) -> tuple[list[dict], int]:
    """Leave out the records whose prompt alone fills ``max_length``: once cut they keep no
    answer token. Returns (kept examples, count left out)."""
    if over_length == "truncate" and max_length:
        kept = [e for e in examples if 1 in e["assistant_masks"][:max_length]]
    else:
        kept = examples
    if not kept:
        raise PipelineError(f"{path}: no record keeps a completion token within max_length {max_length}")
    return kept, len(examples) - len(kept)


@dataclasses.dataclass(frozen=True)
class Examples:
    """The tokenized examples of a run, and the record counts its summary reports."""

    train: list[dict]  # what the trainer gets, after the length filters
    eval: list[dict]  # the validation records scored during training
    replay: list  # ReplayRow: distilled beside the batches (train.replay.loss kl)
    records: int  # training records read, replay records included
    replay_records: int
    truncated: int  # longer than max_length, kept (train.over_length truncate)
    too_long: int  # longer than max_length, dropped (train.over_length drop)
    no_completion: int  # dropped: no answer token left within max_length


def prepare_examples(cfg: Params, tokenizer, sft_config) -> Examples:
    """Every record through the chat template, its assistant turns marked for the loss; then the
    length filters, a sample of the validation records, and the replay rows to distill."""
    paths, tc = cfg.paths, cfg.train
    examples, replay_examples = load_examples(paths.train, cfg.chat.system_prompt, tc.replay.loss == "kl")
    all_examples = tokenize(tokenizer, examples)
    val_examples, _ = load_examples(paths.val, cfg.chat.system_prompt)
    eval_examples = tokenize(tokenizer, random.Random(tc.seed).sample(val_examples,
                                                                      min(tc.eval_records, len(val_examples))))
    lengths = [len(e["input_ids"]) for e in all_examples]
    max_length = sft_config.max_length
    train_examples, truncated, too_long = select_by_length(all_examples, lengths, max_length,
                                                           tc.over_length, paths.train)
    log.info("%d training records (%d tokens); %d longer than max_length %s: %d truncated, %d dropped; "
             "%d of %d validation records scored during training", len(all_examples), sum(lengths),
             truncated + too_long, max_length, truncated, too_long, len(eval_examples), len(val_examples))
    train_examples, no_completion = keep_with_completion(train_examples, max_length, tc.over_length, paths.train)
    replay = replay_for(tokenizer, replay_examples, cfg, sft_config)
    return Examples(train=train_examples, eval=eval_examples, replay=replay,
                    records=len(all_examples) + len(replay_examples), replay_records=len(replay_examples),
                    truncated=truncated, too_long=too_long, no_completion=no_completion)


def replay_for(tokenizer, replay_examples: list[dict], cfg: Params, sft_config) -> list:
    """The replay records as rows to distill (src/distill.py), in a run of one process."""
    distilled = replay_rows(tokenizer, replay_examples, sft_config.max_length)
    if distilled and sft_config.world_size > 1:  # started by torchrun or accelerate with distributed none
        raise PipelineError(f"train.replay.loss kl runs in one process, not {sft_config.world_size}; "
                            "set train.replay.loss: ce")
    if replay_examples:
        log.info("%d replay records distilled beside the batches (train.replay.loss kl), %d a batch",
                 len(distilled), cfg.train.replay.rows_per_batch)
    return distilled


def chat_tokenizer(cfg: Params):
    """The base model's tokenizer, its chat template given ``chat.system_prompt`` as the default
    system turn. Saved with the adapter (and so with the merged model): a client that sends no
    system turn gets the prompt every training example had."""
    tokenizer = load_tokenizer(cfg.paths.base_model, cfg.fetch_base_model.trust_remote_code)
    tokenizer.chat_template = with_system_prompt(tokenizer.chat_template, cfg.chat.system_prompt)
    return tokenizer


def run_checkpoints(cfg: Params) -> RunCheckpoints:
    """This configuration's checkpoints, fingerprinted by the chat and train params, the data
    files and the base model (src/checkpoints.py)."""
    paths = cfg.paths
    return RunCheckpoints(paths.checkpoints, cfg.model_dump(include={"chat", "train"}),
                          {"train": paths.train, "val": paths.val}, paths.base_model,
                          keep=cfg.train.sft.get("save_total_limit"))


def build_model(cfg: Params, configs: LibraryConfigs):
    """The frozen base model, quantized on load for QLoRA (the trainer adds the LoRA adapter)."""
    if configs.attention.kernel == "flex_attention":
        autocast_flex_attention()
    return load_training_base(cfg, configs.dtype, configs.quantization, configs.attention.kernel,
                              configs.sft.gradient_checkpointing)


def build_trainer(cfg: Params, model, tokenizer, configs: LibraryConfigs, examples: Examples,
                  checkpoints: RunCheckpoints, callbacks: list):
    """TRL's SFTTrainer (with the replay KL term when there are replay rows), writing its
    checkpoints into ``checkpoints``; the LoRA adapter goes onto ``model`` here."""
    from datasets import Dataset
    from trl import SFTTrainer

    replay = cfg.train.replay
    score_labelled_positions_only()  # the output layer on the labelled positions alone
    trainer_class = with_replay_kl(SFTTrainer, examples.replay, replay.weight, replay.rows_per_batch, cfg.train.seed)
    trainer = checkpoints.trainer_class(trainer_class)(
        model=model, args=configs.sft, processing_class=tokenizer, peft_config=configs.lora,
        train_dataset=Dataset.from_list(examples.train), eval_dataset=Dataset.from_list(examples.eval),
        callbacks=callbacks,
    )
    trainer.model.print_trainable_parameters()
    return trainer


def summarize(trainer, examples: Examples, checkpoints: RunCheckpoints, train_seconds: float,
              configs: LibraryConfigs) -> dict:
    """The run's metrics: losses, steps, record counts, tokens and times, and how it computed."""
    history = trainer.state.log_history
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in history)
    tokens = trainer.state.num_input_tokens_seen  # non-padding tokens the model computed on
    tokens_this_run = tokens - checkpoints.tokens_before_resume(trainer)
    trained = sequences_in(trainer.train_dataset)
    no_completion = examples.no_completion + len(examples.train) - trained  # + any TRL left out (none expected)
    return {
        "train_loss": mean_train_loss(history),
        "eval_loss": next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None),
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoints.resumed_from_step,
        "records": examples.records,
        "records_trained": trained,
        "records_distilled": len(examples.replay),
        "records_truncated": examples.truncated,
        "records_dropped": {"too_long": examples.too_long, "no_completion_left": no_completion,
                            "no_answer_left": examples.replay_records - len(examples.replay)},
        "tokens_trained": int(tokens),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_time_share": round(eval_seconds / train_seconds, 4) if train_seconds else 0.0,
        "tokens_per_second": round(tokens_this_run / train_seconds, 2) if train_seconds else 0.0,
        "precision": configs.computes,
        "attention": configs.attention.name,
    }


def gathered_adapter(trainer, ran: bool) -> dict | None:
    """The adapter's whole state dict under FSDP, which shards it: every process helps gather it.
    None otherwise (and after a restore, where train() never wrapped the model): the model's own."""
    if not (trainer.is_fsdp_enabled and ran):
        return None
    trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    return trainer.accelerator.get_state_dict(trainer.model)


def save_adapter(cfg: Params, trainer, tokenizer, configs: LibraryConfigs, fingerprint: str, summary: dict,
                 adapter_state: dict | None) -> None:
    """The adapter weights (safetensors) and config, the tokenizer, and the resolved config
    beside them, in ``paths.adapter``."""
    adapter_dir = Path(cfg.paths.adapter)
    with output_folder(adapter_dir) as partial:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(partial, state_dict=adapter_state)
        tokenizer.save_pretrained(partial)
        write_json(partial / TRAIN_CONFIG_FILE, jsonable({
            "params": cfg.model_dump(include={"fetch_base_model", "chat", "train"}),
            "data": data_digests(cfg.paths.train, cfg.paths.val),  # the lineage of what merge_model ships
            "sft": configs.sft.to_dict(), "lora": configs.lora.to_dict(),
            "quantization": configs.quantization, "device": device_kind(), "checkpoint_fingerprint": fingerprint,
            "summary": summary,
        }))
    log.info("wrote %s: %d steps, train loss %.4f, eval loss %s, evaluation took %.1f%% of training time",
             adapter_dir, summary["steps"], summary["train_loss"], summary["eval_loss"],
             100 * summary["eval_time_share"])


def main(cfg: Params):
    """Train and save; returns the trainer (tests inspect its model and history)."""
    relaunch_if_needed(cfg.train.distributed)  # under accelerate launch, when params ask for it
    tokenizer = chat_tokenizer(cfg)
    with run_checkpoints(cfg) as checkpoints:  # the checkpoint folder's lock goes when a run ends in-process
        configs = build_configs(cfg, output_dir=checkpoints.output_dir)
        log.info("training on %s in %s%s, attention: %s", device_kind(), configs.computes,
                 " with 4-bit/8-bit base weights" if configs.quantization else "", configs.attention.name)

        # Data, the checkpoint to resume from, model, metrics writer, trainer.
        examples = prepare_examples(cfg, tokenizer, configs.sft)
        checkpoints.find(configs.sft)
        model = build_model(cfg, configs)
        live = open_live(cfg.paths.train_live, configs.sft)  # None but in one process per machine
        callbacks = [Throughput(), LiveMetrics(live)]
        budget = BudgetStop.from_environment()  # a cloud job's max_cost_usd (src/cloud/cost.py)
        if budget is not None:
            callbacks.append(budget)
        trainer = build_trainer(cfg, model, tokenizer, configs, examples, checkpoints, callbacks)

        # Train, or restore a run that had finished (TRAIN_KEEP_CHECKPOINTS kept its last step).
        train_seconds = checkpoints.train(trainer, callbacks)

        # Save: metrics, adapter and tokenizer, then the spent checkpoints go.
        summary = summarize(trainer, examples, checkpoints, train_seconds, configs)
        adapter_state = gathered_adapter(trainer, ran=not checkpoints.finished)  # under FSDP every process takes part
        if live is not None:  # the writer of this machine
            write_summary(live, summary)
            save_adapter(cfg, trainer, tokenizer, configs, checkpoints.fingerprint, summary, adapter_state)
            checkpoints.clean_up()
        return trainer


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, secrets=("DVC_STUDIO_TOKEN", STUDIO_TOKEN_ENV)))  # live metrics
