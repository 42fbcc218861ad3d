"""Greedy, batched generation that stops at EOS, for the sanity check and evaluation.

    from src.generation import generate
    answers = generate(model, tokenizer, conversations, max_new_tokens=64, batch_size=8)
    answers[0].text, answers[0].ended_with_eos, answers[0].hit_limit
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from src.chat import Message, generation_inputs


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    ended_with_eos: bool  # the model stopped by itself
    hit_limit: bool  # max_new_tokens ran out first


def generate(model, tokenizer, conversations: Sequence[Sequence[Message]], max_new_tokens: int,
             batch_size: int, desc: str = "generating") -> list[Answer]:
    import torch

    eos = tokenizer.eos_token_id
    # Batches of similar prompt lengths pad less; answers come back in the caller's order.
    lengths = generation_inputs(tokenizer, conversations)["attention_mask"].sum(1).tolist() if conversations else []
    order = sorted(range(len(conversations)), key=lambda i: -lengths[i])
    answers: dict[int, Answer] = {}
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        rows = order[start:start + batch_size]
        batch = generation_inputs(tokenizer, [conversations[i] for i in rows]).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        for i, row in zip(rows, out[:, batch["input_ids"].shape[1]:].tolist()):
            ended = eos in row
            kept = row[:row.index(eos)] if ended else row
            answers[i] = Answer(text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                                tokens=len(kept), ended_with_eos=ended,
                                hit_limit=not ended and len(row) >= max_new_tokens)
    return [answers[i] for i in range(len(conversations))]
