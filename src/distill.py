"""Replay by distillation: keep the base model's whole next-token distribution on its own answers.

With ``train.replay.loss: kl`` the replay records (the base model's greedy answers to general
questions, from ``generate_replay_data``) leave the supervised batches. Instead, every training
batch is joined by ``train.replay.rows_per_batch`` of them, and the loss gains

    weight * KL(p_base || p_tuned)

averaged over their answer tokens, where ``p_base`` is the same network with the LoRA adapter
switched off (PEFT's ``disable_adapter``; no second copy of the weights). Cross-entropy on the
greedy answers (``loss: ce``) teaches only the base's top token; the KL term asks for the rest of
its distribution too, which is what the fine-tuning otherwise erodes.

The rows a batch takes follow from the step number alone (a seeded order, one pass after another),
so a resumed run takes the same rows as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from src.chat import supervised_ids


@dataclass(frozen=True)
class ReplayRow:
    """A replay conversation as tokens, and which of them are the answer (the distilled ones)."""

    input_ids: list[int]
    answer: list[bool]


def replay_rows(tokenizer, examples: Sequence[dict], max_length: int | None) -> list[ReplayRow]:
    """Prompt/completion examples as token rows through the chat template, cut at ``max_length``;
    a row whose answer does not survive the cut is left out."""
    rows = []
    for e in examples:
        tokens = supervised_ids(tokenizer, e)
        ids, answer = tokens["input_ids"][:max_length or None], tokens["assistant_masks"][:max_length or None]
        if any(answer):
            rows.append(ReplayRow(ids, [bool(m) for m in answer]))
    return rows


def rows_for(step: int, micro: int, accumulation: int, per_batch: int, total: int, seed: int) -> list[int]:
    """Indices of the replay rows beside micro-batch ``micro`` of optimizer step ``step``: draws
    from a seeded order of all ``total`` rows, a new order on each pass."""
    first = (step * accumulation + micro) * per_batch
    picks = []
    for k in range(first, first + per_batch):
        order = list(range(total))
        random.Random(f"{seed}:{k // total}").shuffle(order)
        picks.append(order[k % total])
    return picks


def kl_to_base(model, rows: Sequence[ReplayRow], device):
    """Mean over the rows' answer tokens of KL(base || model) between next-token distributions;
    ``model`` is a PEFT model whose adapter is switched off for the base's pass."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def padded(rows_of):  # right-padded with zeros (padding attends nowhere and is never an answer)
        return pad_sequence([torch.tensor(r) for r in rows_of], batch_first=True).to(device)

    ids = padded([r.input_ids for r in rows])
    attention = padded([[1] * len(r.input_ids) for r in rows])
    answer = padded([r.answer for r in rows])
    predicts = answer[:, 1:]  # logits at t predict token t + 1: the positions before answer tokens
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][predicts]
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1][predicts]
    base_logp = torch.log_softmax(base.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (base_logp.exp() * (base_logp - logp)).sum(-1).mean()


def with_replay_kl(trainer_class, rows: Sequence[ReplayRow], weight: float, per_batch: int, seed: int):
    """``trainer_class`` whose training loss adds ``weight`` times the KL to the base on
    ``per_batch`` replay rows beside each (micro-)batch, logged as ``replay_kl``. With no rows
    it is ``trainer_class`` unchanged."""
    if not rows:
        return trainer_class

    class ReplayKL(trainer_class):
        _replay_position = (-1, 0)  # (optimizer step, micro-batches of it done)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:
                return result
            step, done = self._replay_position
            done = done if step == self.state.global_step else 0
            self._replay_position = (self.state.global_step, done + 1)
            accumulation = self.args.gradient_accumulation_steps
            picks = rows_for(self.state.global_step, done, accumulation, per_batch, len(rows), seed)
            peft_model = self.accelerator.unwrap_model(model)
            kl = kl_to_base(peft_model, [rows[i] for i in picks], self.args.device)
            self._metrics["train"]["replay_kl"].append(kl.item())
            # The supervised loss is already a share of the whole step's tokens when Trainer
            # passes num_items_in_batch; otherwise Trainer divides the sum by the accumulation.
            extra = weight * kl / (accumulation if num_items_in_batch is not None else 1)
            if return_outputs:
                loss, outputs = result
                return loss + extra, outputs
            return result + extra

    return ReplayKL
