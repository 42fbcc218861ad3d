"""Packing (best-fit decreasing, padding-free) as TRL's SFTTrainer does it for this pipeline:
sequences packed into one row do not see each other. Each sequence's per-token loss in a packed
batch equals its loss run alone; without the reset position ids they would differ."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from src.chat import training_example
from src.records import read_jsonl
from tests.conftest import params_in
from tests.modelkit import build_data, chatml_tokenizer, tiny_model_folder


def sft_trainer(folder: Path, examples: list[dict], packing: bool, out: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(out), packing=packing, max_length=192, report_to="none", use_cpu=True,
                     per_device_train_batch_size=len(examples), seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return SFTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(folder),
                      train_dataset=Dataset.from_list(examples))


def token_losses(model, batch: dict, position_ids: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of the next token (0 where the label is masked), and the mask."""
    inputs = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch and position_ids:
        inputs["position_ids"] = batch["position_ids"]
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    with torch.no_grad():
        logits = model(**inputs).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    mask = labels != -100
    loss = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return loss * mask, mask


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packing")
    folder = tiny_model_folder(tmp / "tiny", chatml_tokenizer())
    cfg = params_in(tmp, generate_replay_data={"enabled": False})
    build_data(cfg)  # the sample data's train split: identity questions, Orca and Platypus rows
    rows = list(read_jsonl(cfg.paths.train))[::25][:8]
    examples = [training_example(r, "You are a helpful AI assistant.") for r in rows]
    return (sft_trainer(folder, examples, True, tmp / "packed"),
            sft_trainer(folder, examples, False, tmp / "alone"))


def test_packed_batch_gives_each_sequence_its_own_loss(trainers):
    packed, alone = trainers
    rows = packed.train_dataset
    assert len(rows) < len(alone.train_dataset)  # sequences were packed together
    assert max(len(r["seq_lengths"]) for r in rows) > 1
    batch = packed.data_collator([rows[i] for i in range(len(rows))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    losses, mask = token_losses(packed.model, batch)
    blind, _ = token_losses(packed.model, batch, position_ids=False)  # positions not reset: one long sequence

    by_ids = {tuple(r["input_ids"]): r for r in alone.train_dataset}
    assert len(starts) - 1 == len(by_ids)  # every sequence once, none cut
    differs = []
    for begin, end in itertools.pairwise(starts):
        ids = tuple(batch["input_ids"][0, begin:end].tolist())
        single = alone.data_collator([by_ids[ids]])
        own, own_mask = token_losses(alone.model, single)
        # the packed row's last token of a sequence predicts the next sequence's first: masked
        span = slice(begin, end - 1)
        assert torch.equal(mask[span], own_mask), "the loss covers other tokens when packed"
        assert own_mask.any()  # each sequence has supervised (completion) tokens
        assert torch.allclose(losses[span], own, atol=1e-5), (losses[span] - own).abs().max()
        differs.append((blind[span] - own).abs().max().item())
    assert max(differs[1:]) > 1e-3  # the control: sequences after the first see the ones before
