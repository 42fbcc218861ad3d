"""Training throughput: the original design's settings against the project's defaults, and each
attention path this machine has.

In one process, on the pipeline's own data (data/final) and base model (models/base), with the
same LoRA settings, it trains a fixed number of steps:

  a) the original design: fp32, sdpa attention, loss on the full text (prompt included) over
     every position's logits, batches padded to their longest example, length-grouped
     sampling, 4 examples per step, evaluation every 10 steps over the whole validation set;
  b) params.yaml as it is: train.precision and train.attention as auto picks them here (bf16
     autocast on CPUs with AVX512-BF16 or AMX), loss on the answers only and the output layer on
     those positions only, best-fit packing without padding (1 row of up to max_length tokens
     per step), evaluation of train.eval_records records halfway and at the end;
  b-fp32, b-all-positions: b with one of its savings undone (fp32; the output layer on every
     position), to show what each is worth;
  paths: b's settings with 4 packed rows per step and no evaluation, once per attention path:
     sdpa over the rows flattened into one sequence (TRL's way), and one packed row per forward
     with sdpa and with eager; flash_attention_2 and flex_attention where the machine has them
     (otherwise the line says why not).

For each it prints supervised tokens per second (answer tokens, EOS included, that the loss
trains, per second of wall time including evaluation, and per second of training alone), the
fraction of computed token positions that are real (not padding), evaluation's share of wall
time and peak RSS; the last line is a one-line summary with b/a both ways.

    dvc repro merge_data fetch_base_model    # the data and the model, once
    python bench/train_throughput.py [--steps 20] [--path-steps 8] [--no-paths]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux), so each run reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Counting:
    """Wraps the trainer's collator; for training batches (the model in train mode), counts the
    token positions computed, the real tokens among them and the answer tokens: looked up by
    token ids in ``answers`` (an unpacked example), else the supervised labels (a packed row,
    whose loss is on answers only)."""

    def __init__(self, collator, model, answers: dict):
        self.collator, self.model, self.answers = collator, model, answers
        self.computed = self.real = self.answer = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        if self.model.training:
            self.computed += batch["input_ids"].numel()
            self.real += sum(len(e["input_ids"]) for e in examples)
            for e in examples:
                known = self.answers.get(tuple(e["input_ids"]))
                self.answer += known if known is not None else sum(x != -100 for x in e["labels"][1:])
        return batch


def answer_tokens(tokenizer, examples: list[dict], max_length: int) -> dict:
    """Token ids of each example (as trained, cut at max_length) -> its answer tokens, EOS included."""
    from src.chat import prompt_ids

    table = {}
    for e in examples:
        ids = tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=True,
                                            return_dict=True)["input_ids"][:max_length]
        table[tuple(ids)] = len(ids) - min(len(prompt_ids(tokenizer, e["prompt"])), len(ids))
    return table


def run(name: str, cfg, sft_overrides: dict, eval_all: bool, steps: int, train_overrides: dict | None = None,
        labelled_only: bool = True, flattened: bool = False) -> dict:
    """``steps`` optimizer steps of ``cfg`` with ``train_overrides`` (train section) and
    ``sft_overrides`` (train.sft); ``flattened`` keeps a step's packed rows in one forward."""
    import dataclasses
    import random

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from src.library_configs import build_configs
    from src.modeling import load_model, load_tokenizer
    from src.throughput import score_labelled_positions_only
    from src.training_data import load_examples

    out = ROOT / "bench" / ".runs" / name
    sft_params = {**cfg.train.sft, "max_steps": steps, "save_strategy": "no", "logging_steps": 5, **sft_overrides}
    train = cfg.train.model_copy(update={"sft": sft_params, **(train_overrides or {})})
    cfg = cfg.model_copy(update={"train": train})
    configs = build_configs(cfg, str(out))
    sft = configs.sft
    if flattened:  # undo one row per forward: the step's rows in one flattened sequence
        sft = dataclasses.replace(sft, per_device_train_batch_size=sft_params["per_device_train_batch_size"],
                                  gradient_accumulation_steps=sft_params.get("gradient_accumulation_steps", 1))
    tokenizer = load_tokenizer(cfg.paths.base_model)
    train_examples, _ = load_examples(cfg.paths.train, cfg.chat.system_prompt)
    val, _ = load_examples(cfg.paths.val, cfg.chat.system_prompt)
    if not eval_all:
        val = random.Random(cfg.train.seed).sample(val, min(cfg.train.eval_records, len(val)))
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.paths.base_model, configs.dtype, configs.quantization, attention=configs.attention.kernel)
    score_labelled_positions_only(labelled_only)
    trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, peft_config=configs.lora,
                         train_dataset=Dataset.from_list(train_examples), eval_dataset=Dataset.from_list(val))
    counting = Counting(trainer.data_collator, trainer.model,
                        answer_tokens(tokenizer, train_examples, sft.max_length))
    trainer.data_collator = counting
    peak_rss_reset()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    path = "flattened rows" if flattened or configs.attention.rows_per_forward is None else "one row per forward"
    return {"name": name, "wall": wall, "eval_share": eval_seconds / wall,
            "supervised_per_s": counting.answer / wall, "train_per_s": counting.answer / (wall - eval_seconds),
            "real_fraction": counting.real / counting.computed, "peak_rss_mib": peak_rss_mib(),
            "steps": trainer.state.global_step, "how": f"{configs.precision}, {configs.attention.kernel}, {path}"}


def show(r: dict) -> None:
    print(f"{r['name']:>16}: {r['supervised_per_s']:6.1f} supervised tokens/s ({r['train_per_s']:6.1f} training "
          f"alone), real-token fraction {r['real_fraction']:.3f}, evaluation {100 * r['eval_share']:4.1f}% of "
          f"wall time, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['steps']} steps in {r['wall']:.1f} s [{r['how']}]",
          flush=True)


def attention_paths(cfg, steps: int) -> None:
    """b with 4 packed rows a step and no evaluation, on each attention path this machine has."""
    from src.throughput import flash_attention_available, flex_attention_available

    rows = {"per_device_train_batch_size": 4, "eval_strategy": "no"}
    runs = [("sdpa-flattened", {"attention": "sdpa"}, True), ("sdpa-row", {"attention": "sdpa"}, False),
            ("eager-row", {"attention": "eager"}, False)]
    if flash_attention_available():
        runs.append(("flash-varlen", {"attention": "flash_attention_2"}, False))
    else:
        print("      flash-varlen: not run: needs a CUDA GPU and the flash_attn package")
    if flex_attention_available():
        runs.append(("flex-document", {"attention": "flex_attention"}, False))
    else:
        print("     flex-document: not run: needs CUDA and Triton (torch has no flex attention backward on CPU)")
    for name, train, flattened in runs:
        show(run(name, cfg, rows, eval_all=False, steps=steps, train_overrides=train, flattened=flattened))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of a, b and b's variants (default 20)")
    parser.add_argument("--path-steps", type=int, default=8, help="steps of 4 rows per attention path (default 8)")
    parser.add_argument("--no-paths", action="store_true", help="a and b only")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from src.config import load_params

    cfg = load_params(str(ROOT))
    for path in (cfg.paths.train, cfg.paths.val, cfg.paths.base_model):
        if not Path(path).exists():
            raise SystemExit(f"error: {path} is missing: run `dvc repro merge_data fetch_base_model` first")
    original = {"packing": False, "padding_free": False, "completion_only_loss": False,
                "train_sampling_strategy": "group_by_length", "per_device_train_batch_size": 4,
                "eval_strategy": "steps", "eval_steps": 10}
    a = run("a-original", cfg, original, eval_all=True, steps=args.steps,
            train_overrides={"precision": "fp32", "attention": "sdpa"}, labelled_only=False)
    show(a)
    b = run("b-project", cfg, {}, eval_all=False, steps=args.steps)
    show(b)
    if not args.no_paths:
        show(run("b-fp32", cfg, {}, eval_all=False, steps=args.steps, train_overrides={"precision": "fp32"}))
        show(run("b-all-positions", cfg, {}, eval_all=False, steps=args.steps, labelled_only=False))
        attention_paths(cfg, args.path_steps)
    print(f"summary: supervised tokens/s b/a = {b['supervised_per_s'] / a['supervised_per_s']:.2f} (goal >= 2), "
          f"training alone {b['train_per_s'] / a['train_per_s']:.2f} (goal >= 1.5); real-token fraction "
          f"a {a['real_fraction']:.3f}, b {b['real_fraction']:.3f} (goal 1.0); eval share a "
          f"{100 * a['eval_share']:.1f}%, b {100 * b['eval_share']:.1f}%; peak RSS a {a['peak_rss_mib']:.0f} MiB, "
          f"b {b['peak_rss_mib']:.0f} MiB; b: {b['how']}; {args.steps} steps each")


if __name__ == "__main__":
    main()
