"""Less compute per trained token: the attention path for packed rows, and a loss that projects
only the positions that have labels.

**Attention.** With ``train.sft.packing`` a training row holds several examples, which must not
attend to each other. TRL flattens a batch of packed rows into one sequence and gives each
example its own position ids; transformers turns those into a block-diagonal mask. What that
costs depends on the kernel (``train.attention``, transformers' ``attn_implementation``):

* ``flash_attention_2``: flash-attention's varlen kernel runs each example on its own; the
  masked blocks are never computed. CUDA with the ``flash_attn`` package.
* ``flex_attention``: PyTorch's flex attention with a document mask skips the masked blocks
  too (89% of them on 4 rows of 1024 tokens). CUDA only: torch has no flex attention backward
  on CPU. It is compiled on first use, which the first few dozen steps pay for.
* ``sdpa`` and ``eager``: the mask is applied to the whole flattened length, every masked block
  computed. On CPU these take **one packed row per forward**: ``per_device_train_batch_size``
  rows a step become that many micro-batches of one row (``gradient_accumulation_steps`` times
  as many), the same rows and tokens per optimizer step and the same loss, without the work
  across rows. On a GPU the rows stay flattened: with 4-bit weights each forward dequantizes
  them again, and one row per forward ran at 0.37 of the original design's speed against 0.91
  flattened (bench/RESULTS.md, gpu_check).

``auto`` takes flash_attention_2 where it is installed; else flex_attention on a CUDA GPU
(1.32x the original design's tokens/s at Llama-2-7B's shape, against 0.91 for sdpa), and eager,
one row per forward, on CPU (faster than sdpa's CPU kernel on rows of a few hundred tokens).
The path taken is in the train metrics (``attention``).

**Loss.** TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``) computes the loss in
vocabulary tiles without the full logits, but on devices without Triton (CPU) it projects every
position, not only those with a label (on XLA devices a changing count would recompile).
:func:`score_labelled_positions_only` makes it project only the labelled ones on CPU and GPU:
the prompt tokens, about half of the default's, no longer pass through the 49k-word output
layer. Loss and gradients are equal within float rounding (tests/test_throughput.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from src.errors import PipelineError

VARLEN = ("flash_attention_2", "flex_attention")  # kernels that skip the masked blocks of flattened rows


@dataclass(frozen=True)
class AttentionPath:
    kernel: str  # transformers' attn_implementation
    rows_per_forward: int | None  # None: a step's packed rows flattened into one forward

    @property
    def name(self) -> str:
        """How the train metrics record it, e.g. ``eager, one packed row per forward``."""
        return f"{self.kernel}, {'flattened rows' if self.rows_per_forward is None else 'one packed row per forward'}"


def flash_attention_available() -> bool:
    import torch
    from transformers.utils import is_flash_attn_2_available

    return torch.cuda.is_available() and is_flash_attn_2_available()


def flex_attention_available() -> bool:
    """CUDA, a torch with flex attention, and Triton to compile it with."""
    import importlib.util

    import torch
    from transformers.utils import is_torch_flex_attn_available

    triton = importlib.util.find_spec("triton") is not None
    return torch.cuda.is_available() and is_torch_flex_attn_available() and triton


def choose_attention(requested: str, device: str, packing: bool) -> AttentionPath:
    """The attention path for ``train.attention`` on ``device`` (``cpu`` or ``cuda``); a forced
    kernel this machine lacks fails in one line."""
    if requested == "flash_attention_2" and not flash_attention_available():
        raise PipelineError("train.attention: flash_attention_2 needs a CUDA GPU and the flash_attn package "
                            "(pip install flash-attn); use auto")
    if requested == "flex_attention" and not (device == "cuda" and flex_attention_available()):
        raise PipelineError("train.attention: flex_attention trains on CUDA only, with Triton (torch has no "
                            "flex attention backward on CPU); use auto")
    kernel = requested
    if requested == "auto":
        kernel = ("flash_attention_2" if flash_attention_available() else
                  "flex_attention" if device == "cuda" and flex_attention_available() else
                  "eager" if device == "cpu" else "sdpa")
    one_row = packing and device == "cpu" and kernel not in VARLEN
    return AttentionPath(kernel, 1 if one_row else None)


def autocast_flex_attention() -> None:
    """Under autocast, give flex attention its query, key and value in the autocast dtype, as
    autocast does for sdpa: with 4-bit weights, ``prepare_model_for_kbit_training`` keeps norms
    in fp32, so they arrive in fp32, and flex attention does not autocast them itself.
    Idempotent."""
    import torch
    from transformers.integrations.flex_attention import flex_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def forward(module, query, key, value, attention_mask, **kwargs):
        device = query.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            query, key, value = (t.to(dtype) for t in (query, key, value))
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["flex_attention"] = forward


def split_rows(sft: dict, path: AttentionPath) -> dict:
    """``train.sft`` with one packed row per forward where ``path`` asks for it: N rows a
    micro-batch become N micro-batches of one (the same rows, tokens and loss per step)."""
    if path.rows_per_forward is None:
        return sft
    rows = sft.get("per_device_train_batch_size", 8)  # TrainingArguments' default
    if rows <= 1:
        return sft
    return {**sft, "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": sft.get("gradient_accumulation_steps", 1) * rows}


def score_labelled_positions_only(on: bool = True) -> None:
    """TRL's fused LM head projects only the positions whose next token has a label, on every
    device but XLA (see the module's docstring); ``on=False`` gives TRL's own choice back (the
    bench compares the two)."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:
        raise PipelineError("trl.trainer.utils has no _use_triton: this TRL is not the pinned one "
                            "(requirements.txt); src/throughput.py needs updating for it")
    original = getattr(decide, "original", decide)
    if not on:
        trl_utils._use_triton = original
        return

    def compact(device) -> bool:
        return device.type in ("cpu", "cuda") or original(device)

    compact.original = original
    trl_utils._use_triton = compact
