"""Training throughput: the original design's batching against the project's defaults.

In one process, on the pipeline's own data (data/final) and base model (models/base), with the
same LoRA settings, it trains a fixed number of steps twice:

  a) the original design: loss on the full text (prompt included), batches padded to their
     longest example, length-grouped sampling, 4 examples per step, evaluation every 10 steps
     over the whole validation set;
  b) params.yaml as it is: loss on the answer only, best-fit packing without padding (1 row
     of up to max_length tokens per step), evaluation of train.eval_records records halfway
     and at the end.

For each it prints supervised tokens per second (answer tokens, EOS included, that the loss
trains, per second of wall time including evaluation), the fraction of computed token
positions that are real (not padding), evaluation's share of wall time and peak RSS; then the
ratio b/a of supervised tokens per second. The last line is a one-line summary.

    dvc repro merge_data fetch_base_model    # the data and the model, once
    python bench/train_throughput.py [--steps 20]
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


def run(name: str, cfg, sft_overrides: dict, eval_all: bool, steps: int) -> dict:
    import random

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from src.modeling import load_model, load_tokenizer
    from src.stages.train import build_configs, load_examples

    out = ROOT / "bench" / ".runs" / name
    sft_params = {**cfg.train.sft, "max_steps": steps, "save_strategy": "no", "logging_steps": 5, **sft_overrides}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"sft": sft_params})})
    dtype, quantization, lora_config, sft = build_configs(cfg, str(out))
    tokenizer = load_tokenizer(cfg.paths.base_model)
    train = load_examples(cfg.paths.train, cfg.chat.system_prompt)
    val = load_examples(cfg.paths.val, cfg.chat.system_prompt)
    if not eval_all:
        val = random.Random(cfg.train.seed).sample(val, min(cfg.train.eval_records, len(val)))
    torch.manual_seed(cfg.train.seed)
    model = load_model(cfg.paths.base_model, dtype, quantization)
    trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, peft_config=lora_config,
                         train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val))
    counting = Counting(trainer.data_collator, trainer.model, answer_tokens(tokenizer, train, sft.max_length))
    trainer.data_collator = counting
    peak_rss_reset()
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    return {"name": name, "wall": wall, "eval_share": eval_seconds / wall,
            "supervised_per_s": counting.answer / wall, "real_fraction": counting.real / counting.computed,
            "peak_rss_mib": peak_rss_mib(), "steps": trainer.state.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    steps = parser.parse_args().steps
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from src.config import load_params

    cfg = load_params(str(ROOT))
    for path in (cfg.paths.train, cfg.paths.val, cfg.paths.base_model):
        if not Path(path).exists():
            raise SystemExit(f"error: {path} is missing: run `dvc repro merge_data fetch_base_model` first")
    original = {"packing": False, "padding_free": False, "completion_only_loss": False,
                "train_sampling_strategy": "group_by_length", "per_device_train_batch_size": 4,
                "eval_strategy": "steps", "eval_steps": 10}
    a = run("a-original", cfg, original, eval_all=True, steps=steps)
    b = run("b-project", cfg, {}, eval_all=False, steps=steps)
    for r in (a, b):
        print(f"{r['name']:>11}: {r['supervised_per_s']:8.1f} supervised tokens/s, real-token fraction "
              f"{r['real_fraction']:.3f}, evaluation {100 * r['eval_share']:.1f}% of wall time, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, {r['steps']} steps in {r['wall']:.1f} s")
    ratio = b["supervised_per_s"] / a["supervised_per_s"]
    print(f"summary: supervised tokens/s b/a = {ratio:.2f} (goal >= 2); real-token fraction "
          f"a {a['real_fraction']:.3f}, b {b['real_fraction']:.3f} (goal >= 0.95); eval share "
          f"a {100 * a['eval_share']:.1f}%, b {100 * b['eval_share']:.1f}%; peak RSS a {a['peak_rss_mib']:.0f} MiB, "
          f"b {b['peak_rss_mib']:.0f} MiB; {steps} steps each")


if __name__ == "__main__":
    main()
