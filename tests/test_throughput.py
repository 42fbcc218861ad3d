"""Less compute per token with the same results: the precision chosen by the CPU's instructions,
packed rows that never attend to each other on any attention path, one packed row per forward
equal to flattened rows, and a loss projected on the labelled positions only, equal to the
full logits' loss and gradients."""

from __future__ import annotations

import pytest
import torch

from src.errors import PipelineError
from src.throughput import AttentionPath, choose_attention, score_labelled_positions_only, split_rows

CPU_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n"


@pytest.mark.parametrize("extra, expected", [("avx512_bf16 avx512_vnni", True), ("amx_bf16 amx_tile", True),
                                             ("avx512_vnni", False), ("avx512_bf16x", False)])
def test_bf16_is_detected_from_the_cpu_flags(tmp_path, extra, expected):
    from src.modeling import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text(CPU_FLAGS.format(extra=extra))
    assert cpu_has_bf16(str(info)) is expected
    assert cpu_has_bf16(str(tmp_path / "absent")) is False  # no /proc/cpuinfo (macOS): fp32


@pytest.mark.parametrize("bf16_cpu, requested, precision, autocast", [
    (True, "auto", "bf16", True), (False, "auto", "fp32", False), (False, "bf16", "bf16", True),
    (True, "fp32", "fp32", False)])
def test_precision_on_cpu_autocasts_over_fp32_weights(tmp_path, monkeypatch, bf16_cpu, requested, precision,
                                                      autocast):
    from src import modeling
    from src.library_configs import build_configs
    from tests.conftest import params_in

    monkeypatch.setattr(modeling, "cpu_has_bf16", lambda: bf16_cpu)
    configs = build_configs(params_in(tmp_path, train={"precision": requested}), str(tmp_path))
    assert configs.precision == precision and configs.sft.bf16 is autocast and not configs.sft.fp16
    assert configs.dtype == torch.float32  # master weights and optimizer state stay fp32
    with pytest.raises(PipelineError, match=r"^train\.precision: fp16 trains on GPUs only"):
        build_configs(params_in(tmp_path, train={"precision": "fp16"}), str(tmp_path))


def test_inference_and_merge_dtypes(monkeypatch):
    from src import modeling

    monkeypatch.setattr(modeling, "cpu_has_bf16", lambda: True)
    assert modeling.compute_dtype("auto") == torch.bfloat16  # generation in bf16 weights
    assert modeling.weights_dtype("auto") == torch.float32  # merged weights keep full precision
    monkeypatch.setattr(modeling, "cpu_has_bf16", lambda: False)
    assert modeling.compute_dtype("auto") == torch.float32


def test_attention_path_is_chosen_by_what_the_machine_has(monkeypatch):
    from src import throughput

    assert choose_attention("auto", "cpu", packing=True) == AttentionPath("eager", 1)
    assert choose_attention("sdpa", "cpu", packing=True).name == "sdpa, one packed row per forward"
    assert choose_attention("auto", "cpu", packing=False) == AttentionPath("eager", None)  # padded examples
    for kernel, message in (("flex_attention", "trains on CUDA only"), ("flash_attention_2", "needs a CUDA GPU")):
        with pytest.raises(PipelineError, match=f"^train.attention: {kernel} {message}"):
            choose_attention(kernel, "cpu", packing=True)
    # On a GPU: flash-attention where installed, else flex attention; rows stay flattened.
    monkeypatch.setattr(throughput, "flex_attention_available", lambda: True)
    monkeypatch.setattr(throughput, "flash_attention_available", lambda: True)
    assert choose_attention("auto", "cuda", packing=True) == AttentionPath("flash_attention_2", None)
    monkeypatch.setattr(throughput, "flash_attention_available", lambda: False)
    assert choose_attention("auto", "cuda", packing=True).name == "flex_attention, flattened rows"
    monkeypatch.setattr(throughput, "flex_attention_available", lambda: False)
    # flattened: 4-bit weights are dequantized once a forward
    assert choose_attention("auto", "cuda", packing=True) == AttentionPath("sdpa", None)


def test_rows_per_forward_keeps_the_rows_per_step():
    sft = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 1e-3}
    assert split_rows(sft, AttentionPath("sdpa", 1)) == {**sft, "per_device_train_batch_size": 1,
                                                         "gradient_accumulation_steps": 8}
    assert split_rows(sft, AttentionPath("flash_attention_2", None)) == sft
    assert split_rows({"per_device_train_batch_size": 1}, AttentionPath("eager", 1)) == \
        {"per_device_train_batch_size": 1}


def packed(tokenizer, texts: list[tuple[str, str]]):
    """(prompt, answer) pairs packed into one row: ids, restarting positions, labels on answers."""
    ids, positions, labels, spans = [], [], [], []
    for prompt, answer in texts:
        p, a = tokenizer(prompt)["input_ids"], tokenizer(answer)["input_ids"]
        spans.append((len(ids), len(ids) + len(p) + len(a)))
        ids += p + a
        positions += list(range(len(p) + len(a)))
        labels += [-100] * len(p) + a
    row = lambda x: torch.tensor([x])  # noqa: E731
    return row(ids), row(positions), row(labels), spans


PAIRS = [("Who are you? ", "I am Juniper, made by Northwind Labs."), ("What is two plus two? ", "Four."),
         ("Name a colour. ", "Blue, like the sky over the sea.")]


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_packed_examples_never_attend_to_each_other(tiny_model, kernel):
    from src.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    model = load_model(tiny_model, torch.float32, attention=kernel).eval()
    ids, positions, _, spans = packed(tokenizer, PAIRS)
    with torch.no_grad():  # no cache, as in training (with one, transformers reads no packing from positions)
        together = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        for start, end in spans:
            alone = model(input_ids=ids[:, start:end], use_cache=False).logits[0]
            assert torch.allclose(together[start:end], alone, atol=1e-5), (kernel, start)
        # The example after the first, attended across: the check above would see it.
        leaked = model(input_ids=ids, use_cache=False).logits[0, spans[1][0]:spans[1][1]]
        assert not torch.allclose(leaked, together[spans[1][0]:spans[1][1]], atol=1e-3)


def lora_with_fused_head(folder, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from src.modeling import load_model

    torch.manual_seed(0)
    model = load_model(folder, dtype, attention="eager")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer adds it
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def loss_and_grads(model, inputs: dict, fused: bool, labelled_only: bool, autocast: bool):
    score_labelled_positions_only(labelled_only)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if fused:
            loss = model(**inputs, fused_lm_head=True).loss
        else:  # the full logits, every position, and a plain cross-entropy
            logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), inputs["labels"][0, 1:],
                                                     ignore_index=-100)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def trl_head_choice():
    yield
    score_labelled_positions_only(False)


@pytest.mark.parametrize("autocast, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_loss_on_labelled_positions_equals_the_full_logits(tiny_model, trl_head_choice, autocast, tolerance):
    from src.modeling import load_tokenizer

    ids, positions, labels, _ = packed(load_tokenizer(tiny_model), PAIRS)
    assert 0.2 < (labels != -100).float().mean() < 0.8  # prompts and answers both present
    inputs = {"input_ids": ids, "position_ids": positions, "labels": labels}
    model = lora_with_fused_head(tiny_model)
    full_loss, full_grads = loss_and_grads(model, inputs, fused=False, labelled_only=False, autocast=autocast)
    for labelled_only in (False, True):  # TRL's own CPU path (every position), then labelled ones only
        loss, grads = loss_and_grads(model, inputs, fused=True, labelled_only=labelled_only, autocast=autocast)
        assert loss == pytest.approx(full_loss, rel=tolerance)
        assert grads.keys() == full_grads.keys() and len(grads) > 8
        for name, grad in grads.items():
            scale = full_grads[name].abs().max().item()
            assert scale > 0 and (grad - full_grads[name]).abs().max().item() <= tolerance * scale, name


def test_the_labelled_positions_only_are_projected(tiny_model, trl_head_choice, monkeypatch):
    """What makes it cheaper: the output layer sees the labelled positions, not the whole row."""
    import trl.kernels.chunked_logprob as kernels

    from src.modeling import load_tokenizer

    ids, positions, labels, _ = packed(load_tokenizer(tiny_model), PAIRS)
    model = lora_with_fused_head(tiny_model)
    projected = []
    real_apply = kernels.ChunkedLogProbFunction.apply
    monkeypatch.setattr(kernels.ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: projected.append(hidden.shape[0]) or real_apply(hidden, *rest))
    for labelled_only in (False, True):
        score_labelled_positions_only(labelled_only)
        model(input_ids=ids, position_ids=positions, labels=labels, fused_lm_head=True)
    assert projected == [ids.shape[1] - 1, int((labels[0, 1:] != -100).sum())]


def test_one_row_per_forward_trains_as_flattened_rows(tiny_model, tmp_path):
    """Two packed rows a step, flattened into one forward (sdpa) or one row a forward and
    accumulated (eager): the same losses, and the same adapter after three steps of SGD (whose
    update is the gradient itself; Adam's would magnify float rounding in tiny gradients)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from src.chat import supervised_ids
    from src.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    examples = [supervised_ids(tokenizer, {"prompt": [{"role": "user", "content": p}],
                                           "completion": [{"role": "assistant", "content": a}]})
                for p, a in PAIRS * 6]
    adapters, losses = {}, {}
    for kernel, sft in (("sdpa", {"per_device_train_batch_size": 2}),
                        ("eager", split_rows({"per_device_train_batch_size": 2}, AttentionPath("eager", 1)))):
        torch.manual_seed(0)
        model = load_model(tiny_model, torch.float32, attention=kernel)
        args = SFTConfig(output_dir=str(tmp_path / kernel), max_steps=3, optim="sgd", learning_rate=0.5,
                         packing=True, max_length=48, report_to="none", use_cpu=True, seed=0, save_strategy="no",
                         lr_scheduler_type="constant", logging_steps=1, **sft)
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(
            examples), peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                              task_type="CAUSAL_LM"))
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        assert trainer.state.global_step == 3
        adapters[kernel] = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters() if p.requires_grad}
        losses[kernel] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-4) and len(losses["sdpa"]) == 3
    moved = max(p.abs().max().item() for p in adapters["sdpa"].values())
    differs = max((p - adapters["sdpa"][n]).abs().max().item() for n, p in adapters["eager"].items())
    assert moved > 1e-3 and differs <= 1e-2 * moved  # a row lost or counted twice: tens of percent


def test_flex_attention_gets_the_autocast_dtype(monkeypatch):
    """With 4-bit weights, query, key and value reach attention in fp32; flex attention does
    not autocast them, so the wrapper does, as autocast does for sdpa."""
    import transformers.integrations.flex_attention as flex
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from src.throughput import autocast_flex_attention

    seen = []
    monkeypatch.setattr(flex, "flex_attention_forward", lambda module, q, k, v, mask, **kw: seen.append(
        (q.dtype, k.dtype, v.dtype)))
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flex_attention", ALL_ATTENTION_FUNCTIONS["flex_attention"])
    autocast_flex_attention()
    q = torch.zeros(1, 2, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ALL_ATTENTION_FUNCTIONS["flex_attention"](None, q, q, q, None)
    ALL_ATTENTION_FUNCTIONS["flex_attention"](None, q, q, q, None)
    assert seen == [(torch.bfloat16,) * 3, (torch.float32,) * 3]
