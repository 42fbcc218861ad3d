"""GPU check: QLoRA at Llama-2-7B's shape, the original design's batching against the project's.

No download: a randomly initialised model with Llama-2-7B's shape (32 layers, hidden 4096,
MLP 11008, 32 heads, vocabulary 32000) is written once to a scratch folder in bfloat16 and
loaded through the pipeline's own ``load_model`` with the GPU profile's 4-bit quantization
(sky-training.yaml's PARAMS: NF4, double quantization, LoRA r 64 on every linear layer,
paged AdamW, gradient checkpointing, sequence length 1024). Synthetic examples with an
Orca-like length mix (prompts about 150 tokens, answers about 250, cut at 1024) train for
a fixed number of steps three times, on the same loaded model:

  a) the original design: loss on the full text, batches of 8 examples padded to their
     longest, length-grouped sampling;
  b) the project: params.yaml with the GPU profile (best-fit packed rows of 1024 tokens,
     4 per step, no padding, loss on the answers);
  c) as (b), one row per forward pass and 4 accumulated per step. TRL flattens a batch of
     packed rows into one sequence; without flash-attention's variable-length kernel the
     attention over it is computed in full under a block-diagonal mask, so (b) may pay for
     attention across rows that (c) never computes.

For each it prints real tokens/s (the non-padding tokens computed), supervised tokens/s (the
answer tokens the loss learns from), the fraction of computed positions that are real, and
peak GPU memory; then the ratios b/a and c/a of supervised tokens/s. Evaluation is left out here
(bench/train_throughput.py measures its share). On a machine without CUDA it says so and runs
the same code on a tiny shape: the figures then say nothing about GPUs.

    bash bench/gpu_check.sh [--steps 30]     # installs missing packages from .whl/ first
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
ORIGINAL_BATCH = 8  # examples per step in the original design
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 1024, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}


def random_model(folder: Path, shape: dict, cuda: bool) -> Path:
    """A randomly initialised Llama of ``shape`` in bfloat16, saved once (reused while its
    config matches)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    marker = folder / "shape.json"
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        return folder
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    marker.write_text(json.dumps(shape))
    print(f"random model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters written to "
          f"{folder} in {time.perf_counter() - start:.0f} s", flush=True)
    del model
    gc.collect()
    torch.cuda.empty_cache() if cuda else None
    return folder


def tokenizer_for(vocab_size: int):
    """A word-level tokenizer with the model's special tokens: the data below is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab_size)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def synthetic_examples(count: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Pre-tokenized prompt + answer examples (answers end with EOS), lengths log-normal."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts = np.clip(rng.lognormal(np.log(150), 0.8, count), 8, 900).astype(int)
    answers = np.clip(rng.lognormal(np.log(250), 0.9, count), 4, 900).astype(int)
    examples = []
    for p, a in zip(prompts, answers):
        ids = [1, *rng.integers(4, vocab_size, p + a - 2).tolist(), 2]
        examples.append({"input_ids": ids, "completion_mask": [0] * p + [1] * a})
    return examples


def gpu_config(root: Path, model_folder: Path, steps: int, cuda: bool):
    """params.yaml with sky-training.yaml's GPU profile on top, the base model swapped."""
    import yaml

    from src.cloud.profile import apply_overrides, gpu_profile_overrides
    from src.config import validate_params

    raw = apply_overrides(yaml.safe_load((root / "params.yaml").read_text()), gpu_profile_overrides())
    raw["paths"]["base_model"] = str(model_folder)
    sft = raw["train"]["sft"]
    sft.update({"max_steps": steps, "save_strategy": "no", "eval_strategy": "no", "logging_steps": 10,
                "num_train_epochs": 1})
    if not cuda and str(sft.get("optim", "")).startswith("paged_"):
        sft["optim"] = "adamw_torch"  # paged optimizers need CUDA
    return validate_params(raw)


def run(name: str, cfg, model, tokenizer, examples: list[dict], sft_overrides: dict, cuda: bool):
    """Train ``model`` with LoRA under ``cfg`` plus ``sft_overrides``; return the figures and
    the base model with the LoRA layers taken out again."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from bench.train_throughput import Counting
    from src.stages.train import build_configs

    train = cfg.train.model_copy(update={"sft": {**cfg.train.sft, **sft_overrides}})
    _, _, lora_config, sft = build_configs(cfg.model_copy(update={"train": train}),
                                           tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
    trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, peft_config=lora_config,
                         train_dataset=Dataset.from_list(examples))
    cut = sft.max_length
    answers = {tuple(e["input_ids"][:cut]): sum(e["completion_mask"][:cut]) for e in examples}
    counting = Counting(trainer.data_collator, trainer.model, answers)
    trainer.data_collator = counting
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    result = {"name": name, "wall": wall, "steps": trainer.state.global_step,
              "real_per_s": counting.real / wall, "supervised_per_s": counting.answer / wall,
              "real_fraction": counting.real / counting.computed, "peak_gib": peak}
    base = trainer.model.unload()  # the LoRA layers out again: the next run starts from the same base
    del trainer
    gc.collect()
    torch.cuda.empty_cache() if cuda else None
    return result, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--scratch", type=Path, default=Path(os.environ.get("GPU_CHECK_SCRATCH", "/tmp/gpu-check")),
                        help="where the random model is written (about 13.5 GB at 7B's shape)")
    args = parser.parse_args()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import torch
    from peft import prepare_model_for_kbit_training

    from src.modeling import load_model

    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name(0)
        shape, label = LLAMA_2_7B, "Llama-2-7B shape"
    else:
        device = "CPU"
        shape, label = TINY, "tiny shape"
        print("no CUDA device: running the same code on a tiny Llama; these figures say nothing about GPUs",
              flush=True)
    folder = random_model(args.scratch / ("llama-2-7b-shape" if cuda else "tiny-shape"), shape, cuda)
    cfg = gpu_config(ROOT, folder, args.steps, cuda)
    from src.stages.train import build_configs

    dtype, quantization, _, sft = build_configs(cfg, tempfile.mkdtemp(prefix="gpu-check-"))
    start = time.perf_counter()
    model = load_model(folder, dtype, quantization)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=sft.gradient_checkpointing)
    optimizer = getattr(sft.optim, "value", sft.optim)
    print(f"loaded {label} in 4-bit in {time.perf_counter() - start:.0f} s on {device}; "
          f"sequence length {sft.max_length}, LoRA r {cfg.train.lora['r']}, optimizer {optimizer}, "
          f"gradient checkpointing {sft.gradient_checkpointing}", flush=True)
    tokenizer = tokenizer_for(shape["vocab_size"])
    examples = synthetic_examples(max(400, args.steps * 16), shape["vocab_size"])

    original = {"packing": False, "padding_free": False, "completion_only_loss": False,
                "train_sampling_strategy": "group_by_length", "per_device_train_batch_size": ORIGINAL_BATCH}
    ours = {"completion_only_loss": True}  # the data here is token ids with a completion mask
    rows = cfg.train.sft["per_device_train_batch_size"]
    # The same rows one per forward pass, accumulated: a batch of packed rows is one flat
    # sequence, and attention without a variable-length kernel masks it in full.
    accumulated = {**ours, "per_device_train_batch_size": 1, "gradient_accumulation_steps": rows}
    a, model = run("a-original", cfg, model, tokenizer, examples, original, cuda)
    b, model = run("b-project", cfg, model, tokenizer, examples, ours, cuda)
    c, model = run("c-accum", cfg, model, tokenizer, examples, accumulated, cuda)

    def gib(value: float) -> str:
        return f"{value:.1f} GiB" if cuda else "n/a"

    print(f"attention: {model.config._attn_implementation}; a: {ORIGINAL_BATCH} padded examples per step; "
          f"b: {rows} packed rows per step; c: 1 packed row per forward, {rows} accumulated per step")
    for r in (a, b, c):
        print(f"{r['name']:>11}: {r['real_per_s']:9.0f} real tokens/s, {r['supervised_per_s']:9.0f} supervised "
              f"tokens/s, real-token fraction {r['real_fraction']:.3f}, peak GPU memory {gib(r['peak_gib'])}, "
              f"{r['steps']} steps in {r['wall']:.1f} s")
    print(f"summary: {device}, {label}, QLoRA, seq {sft.max_length}: supervised tokens/s b/a = "
          f"{b['supervised_per_s'] / a['supervised_per_s']:.2f}, c/a = {c['supervised_per_s'] / a['supervised_per_s']:.2f}; "
          f"real-token fraction a {a['real_fraction']:.3f}, b {b['real_fraction']:.3f}; peak GPU memory "
          f"a {gib(a['peak_gib'])}, b {gib(b['peak_gib'])}, c {gib(c['peak_gib'])}; {args.steps} steps each")


if __name__ == "__main__":
    main()
