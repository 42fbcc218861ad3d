"""GPU check: QLoRA at Llama-2-7B's shape, the original design's batching against the project's.

No download: a randomly initialised model with Llama-2-7B's shape (32 layers, hidden 4096,
MLP 11008, 32 heads, vocabulary 32000) is written once to a scratch folder in bfloat16 and
loaded through the pipeline's own ``load_model`` with the GPU profile's 4-bit quantization
(profiles/llama2-7b-qlora.yaml: NF4, double quantization, LoRA r 64 on every linear layer,
paged AdamW, gradient checkpointing, sequence length 1024). Synthetic examples with an
Orca-like length mix (prompts about 150 tokens, answers about 250, cut at 1024) train for
a fixed number of steps up to five times, on the same loaded model (loaded once; the LoRA
layers are taken out after each run and GPU memory is released, peak memory reset per run):

  a) the original design: loss on the full text, batches of 8 examples padded to their
     longest, length-grouped sampling (the batches formed as its sampler forms them over the
     whole set, megabatches of 50 batches sorted by length, and drawn evenly across the
     lengths in a shuffled order: a short run of the sampler itself sees only the longest);
  b) the project: params.yaml with the GPU profile (best-fit packed rows of 1024 tokens,
     4 per step, no padding, loss on the answers);
  c) as (b), one row per forward pass and 4 accumulated per step. TRL flattens a batch of
     packed rows into one sequence; without flash-attention's variable-length kernel the
     attention over it is computed in full under a block-diagonal mask, so (b) may pay for
     attention across rows that (c) never computes;
  d) as (b) with attn_implementation="flex_attention": transformers turns the packed
     sequence's position_ids into a block-sparse BlockMask, so the 128x128 blocks between
     different examples are skipped rather than computed and masked. The first call
     reports the mask's type and how many blocks it computes. Under bf16 autocast the
     query, key and value reach the attention in float32 (prepare_model_for_kbit_training
     keeps norms and embeddings in float32); SDPA is cast to bf16 by autocast, flex
     attention may not be (it depends on the torch version), so they are cast here as
     autocast would, and the dtypes seen are reported;
  e) the faster of (b) and (d) plus Liger's kernels (SFTConfig use_liger_kernel=True), when
     liger_kernel imports and CUDA is present. TRL 1.16 scores the loss with its own
     chunked LM head in every run (the full-vocabulary logits are never materialised) and
     refuses Liger's fused linear cross-entropy, so (e) measures Liger's RMSNorm, RoPE and
     SwiGLU kernels on top of that.

For each it prints real tokens/s (the non-padding tokens computed) and supervised tokens/s (the
answer tokens the loss learns from) over the steps after the first few (``--warmup``:
compilation and first-call costs left out; whole-run figures beside them), the fraction of
computed positions that are real, and the run's peak GPU memory (torch's allocator: the paged
optimizer's states, in CUDA managed memory, are not in it); then the ratios b/a, c/a, d/a and
e/a of supervised tokens/s and of peak memory. ``--json PATH`` writes all figures as JSON
(rewritten after every run, so a run stopped part-way leaves what it measured). Evaluation is
left out here (bench/train_throughput.py measures its share). On a machine without CUDA it
says so and runs the same code on a tiny shape: the figures then say nothing about GPUs.

    bash bench/gpu_check.sh [--steps 30] [--json PATH] [--budget SECONDS]
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

try:  # a one-line Triton kernel: launching it shows whether Triton works here (it builds its
    # launcher with a C compiler and Python's headers the first time, which some images lack)
    import triton
    import triton.language as tl

    @triton.jit
    def _add_one(x_ptr):
        tl.store(x_ptr, tl.load(x_ptr) + 1)
except Exception:  # noqa: BLE001 - no triton (a CPU machine), or a broken one: triton_problem says
    _add_one = None

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


def original_batches(examples: list[dict], steps: int, max_length: int, seed: int = 0) -> list[dict]:
    """The examples of ``steps`` batches as the original design's length-grouped sampler forms
    them over a whole data set (megabatches of 50 batches, each sorted by length), drawn evenly
    across the lengths and put in a shuffled order, for sequential sampling. A short run of the
    sampler itself would see only the first megabatch's longest batches."""
    import random

    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [min(len(e["input_ids"]), max_length) for e in examples]
    order = get_length_grouped_indices(lengths, ORIGINAL_BATCH, mega_batch_mult=50,
                                       generator=torch.Generator().manual_seed(seed))
    batches = [order[i:i + ORIGINAL_BATCH] for i in range(0, len(order) - ORIGINAL_BATCH + 1, ORIGINAL_BATCH)]
    picked = [batches[i * len(batches) // steps] for i in range(steps)] if steps <= len(batches) else batches
    random.Random(seed).shuffle(picked)
    return [examples[j] for batch in picked for j in batch]


def gpu_config(root: Path, model_folder: Path, steps: int, cuda: bool):
    """params.yaml with the 7B profile (profiles/llama2-7b-qlora.yaml) on top, the base model swapped."""
    from src.cloud.profile import load_profile, merged, read_yaml
    from src.config import validate_params, with_output_paths

    overlay, _ = load_profile(root / "profiles/llama2-7b-qlora.yaml")
    raw = with_output_paths(merged(read_yaml(root / "params.yaml"), overlay), root)
    raw["paths"]["base_model"] = str(model_folder)
    sft = raw["train"]["sft"]
    sft.update({"max_steps": steps, "save_strategy": "no", "eval_strategy": "no", "logging_steps": 10,
                "num_train_epochs": 1})
    if not cuda and str(sft.get("optim", "")).startswith("paged_"):
        sft["optim"] = "adamw_torch"  # paged optimizers need CUDA
    return validate_params(raw)


def versions() -> dict:
    """Versions (and where from) of the packages the figures depend on."""
    import importlib
    import platform

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "pydantic",
                 "triton", "liger_kernel"):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is reported, not raised
            found[name] = f"not importable ({type(err).__name__}: {str(err)[:120]})"
            continue
        version = getattr(module, "__version__", None)
        if version is None:
            from importlib.metadata import PackageNotFoundError
            from importlib.metadata import version as dist_version
            try:
                version = dist_version(name.replace("_", "-"))
            except PackageNotFoundError:
                version = "?"
        found[name] = f"{version} ({Path(getattr(module, '__file__', '') or '?').parent})"
    return found


class Diagnostics:
    """What the flex-attention wrapper saw on its first training call."""

    def __init__(self):
        self.seen: dict = {}
        self.cast_calls = 0

    def record(self, module, query, key, value, attention_mask) -> None:
        import torch

        if self.seen or not module.training:
            return
        device = query.device.type
        info = {"dtypes_in": [str(t.dtype).removeprefix("torch.") for t in (query, key, value)],
                "autocast": torch.is_autocast_enabled(device), "query_length": int(query.shape[-2]),
                "batch": int(query.shape[0]), "mask": type(attention_mask).__name__}
        if info["autocast"]:
            info["autocast_dtype"] = str(torch.get_autocast_dtype(device)).removeprefix("torch.")
        try:
            from torch.nn.attention.flex_attention import BlockMask
        except ImportError:
            BlockMask = ()  # noqa: N806
        if isinstance(attention_mask, BlockMask):
            computed = int(attention_mask.kv_num_blocks.sum().item())
            if attention_mask.full_kv_num_blocks is not None:
                computed += int(attention_mask.full_kv_num_blocks.sum().item())
            size = attention_mask.BLOCK_SIZE[0]
            blocks = -(-info["query_length"] // size)
            info.update({"block_size": size, "blocks_computed": computed,
                         "blocks_causal": info["batch"] * blocks * (blocks + 1) // 2,
                         "blocks_all": info["batch"] * blocks * blocks,
                         "sparsity_percent": round(float(attention_mask.sparsity()), 2)})
        self.seen = info


FLEX = Diagnostics()


def install_flex_autocast() -> None:
    """Route ``flex_attention`` through a wrapper that records what it receives and, under
    autocast, casts query, key and value to the autocast dtype as SDPA's autocast rule does."""
    import torch
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def forward(module, query, key, value, attention_mask, **kwargs):
        FLEX.record(module, query, key, value, attention_mask)
        device = query.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            if any(t.dtype != dtype for t in (query, key, value)):
                FLEX.cast_calls += 1
                query, key, value = (t.to(dtype) for t in (query, key, value))
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["flex_attention"] = forward


def triton_problem() -> str | None:
    """Why Triton kernels cannot run on this GPU, or None. TRL's chunked LM head, inductor (flex
    attention) and Liger all compile Triton kernels."""
    import torch

    try:
        import triton  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"triton does not import ({type(err).__name__}: {str(err)[:200]})"
    if _add_one is None:  # the test itself failed, not Triton's kernels: let the runs find out
        print("warning: the test Triton kernel could not be defined; assuming Triton works", flush=True)
        return None
    try:
        x = torch.zeros(1, device="cuda")
        _add_one[(1,)](x)
        torch.cuda.synchronize()
        if x.item() != 1:
            return f"a test Triton kernel computed {x.item()}, not 1"
    except Exception as err:  # noqa: BLE001
        return f"a test Triton kernel fails ({type(err).__name__}: {str(err)[:300]})"
    return None


def flex_unavailable(model) -> str | None:
    """Why flex attention cannot be used here, or None."""
    from transformers.utils import is_torch_flex_attn_available

    if not is_torch_flex_attn_available():
        return "this torch has no flex attention (needs 2.5+)"
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError as err:
        return f"torch.nn.attention.flex_attention does not import ({err})"
    if not model._can_set_attn_implementation():
        return f"{type(model).__name__} cannot switch its attention implementation"
    import torch

    if not torch.cuda.is_available():  # torch's flex attention has had no backward on CPU
        q = torch.randn(1, 1, 128, 16, requires_grad=True)
        try:
            flex_attention(q, q, q).sum().backward()
        except Exception as err:  # noqa: BLE001
            return f"flex attention cannot train on CPU in this torch ({type(err).__name__}: {str(err)[:160]})"
    return None


def liger_unavailable(cuda: bool) -> str | None:
    """Why Liger's kernels cannot be used here, or None."""
    if not cuda:
        return "Liger's kernels are Triton kernels for GPUs: no CUDA device"
    try:
        import liger_kernel.transformers  # noqa: F401 - imports triton
    except Exception as err:  # noqa: BLE001
        return f"liger_kernel does not import ({type(err).__name__}: {str(err)[:200]})"
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        return "transformers does not accept this liger_kernel (needs 0.3.0+)"
    return None


def has_lora(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def run(name: str, cfg, model, tokenizer, examples: list[dict], sft_overrides: dict, cuda: bool,
        warmup: int):
    """Train ``model`` with LoRA under ``cfg`` plus ``sft_overrides``; return the figures (or the
    error) and the base model with the LoRA layers taken out again."""
    import traceback

    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from bench.train_throughput import Counting
    from src.library_configs import build_configs

    class Ledger(Counting):
        """Counting, with each training micro-batch's counts kept in the order collated (the
        order trained: one process, no loader workers), so that a window of optimizer steps
        can be counted exactly, leaving out batches the loader fetched ahead."""

        def __init__(self, *args):
            super().__init__(*args)
            self.batches: list[tuple[int, int, int]] = []

        def __call__(self, examples):
            before = (self.real, self.answer, self.computed)
            batch = super().__call__(examples)
            if (self.real, self.answer, self.computed) != before:
                self.batches.append((self.real - before[0], self.answer - before[1], self.computed - before[2]))
            return batch

        def between(self, first: int, last: int) -> tuple[int, int, int]:
            """Real, answer and computed tokens of micro-batches first..last-1."""
            chosen = self.batches[first:last]
            return tuple(sum(b[i] for b in chosen) for i in range(3))

    class StepClock(TrainerCallback):
        """The time at the end of every optimizer step (the GPU synchronised first)."""

        def __init__(self):
            self.marks: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((state.global_step, time.perf_counter()))

    trainer = counting = clock = None
    result: dict = {"name": name}
    try:
        train = cfg.train.model_copy(update={"sft": {**cfg.train.sft, **sft_overrides}})
        configs = build_configs(cfg.model_copy(update={"train": train}), tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
        lora_config, sft = configs.lora, configs.sft
        trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, peft_config=lora_config,
                             train_dataset=Dataset.from_list(examples))
        cut = sft.max_length
        answers = {tuple(e["input_ids"][:cut]): sum(e["completion_mask"][:cut]) for e in examples}
        counting = Ledger(trainer.data_collator, trainer.model, answers)
        trainer.data_collator = counting
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.model.train()  # Trainer sets it only after fetching the first batches; count those too
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        steps, per_step = trainer.state.global_step, sft.gradient_accumulation_steps
        real, answer, computed = counting.between(0, steps * per_step)
        result.update({"wall": wall, "steps": steps, "examples": len(examples), "micro_batches_per_step": per_step,
                       "real_per_s_whole": real / wall, "supervised_per_s_whole": answer / wall,
                       "real_fraction": real / computed, "peak_gib": peak,
                       "attention": trainer.model.config._attn_implementation,
                       "liger": bool(getattr(sft, "use_liger_kernel", False))})
        marks = clock.marks
        i = min(warmup, len(marks) - 1) - 1  # the mark that ends the warmup steps
        if i >= 0:
            (s0, t0), (s1, t1) = marks[i], marks[-1]
            real, answer, _ = counting.between(s0 * per_step, s1 * per_step)
            result.update({"steady_steps": f"{s0 + 1}-{s1}", "steady_wall": t1 - t0,
                           "real_per_s": real / (t1 - t0), "supervised_per_s": answer / (t1 - t0),
                           "warmup_wall": t0 - start, "step_seconds": (t1 - t0) / (s1 - s0)})
        else:  # too few steps for a steady-state window: the whole run
            result.update({"steady_steps": "all", "steady_wall": wall, "real_per_s": result["real_per_s_whole"],
                           "supervised_per_s": result["supervised_per_s_whole"], "warmup_wall": 0.0,
                           "step_seconds": wall / max(1, steps)})
    except Exception as err:  # noqa: BLE001 - a failed variant is reported and the others still run
        traceback.print_exc()
        result["error"] = f"{type(err).__name__}: {str(err)[:500]}"
        print(f"{name}: failed: {result['error']}", flush=True)
    wrapped = trainer.model if trainer is not None else model
    base = wrapped.unload() if isinstance(wrapped, PeftModel) else wrapped  # the LoRA layers out again
    if has_lora(base):
        raise RuntimeError(f"{name}: the LoRA layers could not be taken out of the model; stopping here")
    del trainer, wrapped, counting, clock  # the optimizer and its states go with the trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="first steps left out of the steady-state figures (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: start no further run once the script has run this long")
    parser.add_argument("--only", default="abcde", help="the runs to make, among abcde (default all)")
    parser.add_argument("--scratch", type=Path, default=Path(os.environ.get("GPU_CHECK_SCRATCH", "/tmp/gpu-check")),
                        help="where the random model is written (about 13.5 GB at 7B's shape)")
    args = parser.parse_args()
    began = time.perf_counter()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    import torch
    from peft import prepare_model_for_kbit_training

    from src.modeling import load_model

    report: dict = {"argv": sys.argv[1:], "steps": args.steps, "warmup": args.warmup, "versions": versions(),
                    "runs": {}, "skipped": {}}

    def save() -> None:
        report["elapsed"] = time.perf_counter() - began
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            partial = args.json.with_name(args.json.name + ".partial")
            partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
            partial.replace(args.json)

    print("versions: " + "; ".join(f"{k} {v}" for k, v in report["versions"].items()), flush=True)
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name(0)
        shape, label = LLAMA_2_7B, "Llama-2-7B shape"
    else:
        device = "CPU"
        shape, label = TINY, "tiny shape"
        print("no CUDA device: running the same code on a tiny Llama; these figures say nothing about GPUs",
              flush=True)
    report.update({"device": device, "shape": label, "cuda": cuda})
    no_triton = triton_problem() if cuda else "no CUDA device"
    report["triton"] = no_triton or "works"
    if cuda and no_triton:
        # TRL's chunked LM head folds its tiles with Triton kernels on CUDA: fold them with torch
        # ops instead, as it does on devices without Triton, so that runs a-c still measure.
        import trl.kernels.chunked_logprob as chunked

        chunked._TRITON_AVAILABLE = False
        print(f"Triton does not work here: {no_triton}; TRL's LM head falls back to torch ops, and "
              "flex attention and Liger (which need Triton) are left out", flush=True)
    elif cuda:
        print("Triton works here (a test kernel ran)", flush=True)
    save()
    folder = random_model(args.scratch / ("llama-2-7b-shape" if cuda else "tiny-shape"), shape, cuda)
    cfg = gpu_config(ROOT, folder, args.steps, cuda)
    from src.library_configs import build_configs

    configs = build_configs(cfg, tempfile.mkdtemp(prefix="gpu-check-"))
    dtype, quantization, sft = configs.dtype, configs.quantization, configs.sft
    start = time.perf_counter()
    model = load_model(folder, dtype, quantization)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=sft.gradient_checkpointing)
    optimizer = getattr(sft.optim, "value", sft.optim)
    report["load_seconds"] = time.perf_counter() - start
    report["setup_seconds"] = time.perf_counter() - began
    print(f"loaded {label} in 4-bit in {report['load_seconds']:.0f} s on {device}; "
          f"sequence length {sft.max_length}, LoRA r {cfg.train.lora['r']}, optimizer {optimizer}, "
          f"gradient checkpointing {sft.gradient_checkpointing}; set up in {report['setup_seconds']:.0f} s",
          flush=True)
    tokenizer = tokenizer_for(shape["vocab_size"])
    examples = synthetic_examples(max(400, args.steps * 16), shape["vocab_size"])

    # The original design: length-grouped batches (formed here as its sampler forms them over a
    # whole data set, then taken in order), padded, loss on the full text.
    original = {"packing": False, "padding_free": False, "completion_only_loss": False,
                "train_sampling_strategy": "sequential", "per_device_train_batch_size": ORIGINAL_BATCH}
    ours = {"completion_only_loss": True}  # the data here is token ids with a completion mask
    rows = cfg.train.sft["per_device_train_batch_size"]
    # The same rows one per forward pass, accumulated: a batch of packed rows is one flat
    # sequence, and attention without a variable-length kernel masks it in full.
    accumulated = {**ours, "per_device_train_batch_size": 1, "gradient_accumulation_steps": rows}
    sdpa = model.config._attn_implementation
    results: dict = {}

    def attempt(key: str, name: str, data: list[dict], overrides: dict, why_not: str | None = None):
        nonlocal model
        if key not in args.only:
            why_not = why_not or "not asked for (--only)"
        elif args.budget is not None and time.perf_counter() - began > args.budget and why_not is None:
            why_not = f"time budget: {time.perf_counter() - began:.0f} s past --budget {args.budget:.0f}"
        if why_not:
            print(f"{name}: skipped: {why_not}", flush=True)
            report["skipped"][key] = why_not
            save()
            return None
        print(f"{name}: {args.steps} steps, attention {model.config._attn_implementation} "
              f"(elapsed {time.perf_counter() - began:.0f} s)", flush=True)
        result, model = run(name, cfg, model, tokenizer, data, overrides, cuda, args.warmup)
        report["runs"][key] = result
        save()
        if "error" in result:
            return None
        results[key] = result
        return result

    attempt("a", "a-original", original_batches(examples, args.steps, sft.max_length), original)
    attempt("b", "b-project", examples, ours)
    attempt("c", "c-accum", examples, accumulated)

    # d) flex attention: a BlockMask from the packed rows' position_ids, masked blocks skipped.
    why_not = f"inductor compiles flex attention to Triton kernels, and {no_triton}" if cuda and no_triton \
        else flex_unavailable(model)
    if why_not is None and "d" in args.only:
        try:
            install_flex_autocast()
            model.set_attn_implementation("flex_attention")
        except Exception as err:  # noqa: BLE001
            why_not = f"cannot switch to flex_attention ({type(err).__name__}: {err})"
    d = attempt("d", "d-flex", examples, ours, why_not)
    report["flex"] = {**FLEX.seen, "cast_calls": FLEX.cast_calls} if FLEX.seen else None
    if FLEX.seen:
        print(f"flex attention, first training call: {json.dumps(FLEX.seen)}; "
              f"calls cast to the autocast dtype: {FLEX.cast_calls}", flush=True)
    b = results.get("b")
    best = "d" if d and (not b or d["supervised_per_s"] > b["supervised_per_s"]) else "b"
    wanted = "flex_attention" if best == "d" else sdpa
    if model.config._attn_implementation != wanted:
        model.set_attn_implementation(wanted)
    if best != "d" and "d" in report["runs"]:
        torch._dynamo.reset()  # the compiled flex graphs, no longer used

    # e) Liger's kernels on the faster of (b) and (d). Last: they patch the model for good.
    report["e_based_on"] = best
    why_not = f"Liger's kernels are Triton kernels, and {no_triton}" if cuda and no_triton else liger_unavailable(cuda)
    attempt("e", f"e-liger+{best}", examples, {**ours, "use_liger_kernel": True}, why_not)

    def gib(value: float) -> str:
        return f"{value:.1f} GiB" if cuda else "n/a"

    print(f"attention: {sdpa} unless named; a: {ORIGINAL_BATCH} padded examples per step; "
          f"b: {rows} packed rows per step; c: 1 packed row per forward, {rows} accumulated per step; "
          f"d: as b with flex_attention; e: as {best} with Liger's kernels")
    for r in results.values():
        print(f"{r['name']:>13}: {r['real_per_s']:9.0f} real tokens/s, {r['supervised_per_s']:9.0f} supervised "
              f"tokens/s (steps {r['steady_steps']}, {r['step_seconds']:.2f} s/step; whole run "
              f"{r['supervised_per_s_whole']:.0f}), real-token fraction {r['real_fraction']:.3f}, "
              f"peak GPU memory {gib(r['peak_gib'])}, {r['steps']} steps in {r['wall']:.1f} s")
    a = results.get("a")
    ratios, memory = {}, {}
    for key in "bcde":
        r = results.get(key)
        if a and r:
            ratios[f"{key}/a"] = r["supervised_per_s"] / a["supervised_per_s"]
            memory[f"{key}/a"] = r["peak_gib"] / a["peak_gib"] if cuda else None
    report.update({"supervised_ratio_vs_a": ratios, "peak_memory_ratio_vs_a": memory})

    def ratio(key: str) -> str:
        if f"{key}/a" in ratios:
            return f"{ratios[f'{key}/a']:.2f}"
        return "failed" if key in report["runs"] else "skipped"

    def mem_ratio(key: str) -> str:
        value = memory.get(f"{key}/a")
        return f"{value:.2f}" if value is not None else "n/a"

    peaks = ", ".join(f"{k} {gib(r['peak_gib'])}" for k, r in results.items())
    fractions = ", ".join(f"{k} {r['real_fraction']:.3f}" for k, r in results.items() if k in "ab")
    steady = '/'.join(sorted({r['steady_steps'] for r in results.values()}))
    summary = (f"summary: {device}, {label}, QLoRA, seq {sft.max_length}: supervised tokens/s "
               f"b/a = {ratio('b')}, c/a = {ratio('c')}, d/a = {ratio('d')}, e/a = {ratio('e')} "
               f"(e on {best}); peak GPU memory vs a: b {mem_ratio('b')}, c {mem_ratio('c')}, d {mem_ratio('d')}, "
               f"e {mem_ratio('e')}; real-token fraction {fractions}; peak GPU memory {peaks}; "
               f"{args.steps} steps each, tokens/s over steps {steady}; "
               f"{time.perf_counter() - began:.0f} s in all")
    report["summary"] = summary
    save()
    print(summary, flush=True)
    if args.json:
        print(f"figures written to {args.json}", flush=True)


if __name__ == "__main__":
    main()
