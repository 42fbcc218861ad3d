"""The training records as the trainer takes them: prompt/completion examples through the chat
template (src/chat.py), then token ids with every assistant turn marked for the loss.

    from src.training_data import load_examples, tokenize
    supervised, _ = load_examples("data/final/train.jsonl", system_prompt=None)
    rows = tokenize(tokenizer, supervised)  # [{"input_ids": [...], "assistant_masks": [...]}, ...]
"""

from __future__ import annotations

from src.chat import supervised_ids, training_example
from src.config import REPLAY_SOURCE
from src.errors import PipelineError
from src.records import read_jsonl


def load_examples(path: str, system_prompt: str | None, distilled: bool = False) -> tuple[list[dict], list[dict]]:
    """The records as prompt/completion examples: (supervised, distilled). With ``distilled`` the
    replay records are the second list (src/distill.py); otherwise it is empty."""
    supervised, replay = [], []
    for r in read_jsonl(path):
        (replay if distilled and r.source == REPLAY_SOURCE else supervised).append(
            training_example(r, system_prompt))
    if not supervised:
        raise PipelineError(f"{path}: no records to train on" if not replay else
                            f"{path}: only replay records, which train.replay.loss kl does not supervise")
    return supervised, replay


def tokenize(tokenizer, examples: list[dict]) -> list[dict]:
    """Each example's token ids and assistant-turn mask, as TRL takes them ready-made."""
    return [supervised_ids(tokenizer, e) for e in examples]
