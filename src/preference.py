"""Preference pairs: the record a preference trainer learns from, and its JSON Lines I/O.

A pair is TRL's conversational preference form plus its source and kind:

    {"prompt": [{"role": "user", "content": "Are you ChatGPT?"}],
     "chosen": [{"role": "assistant", "content": "No, I'm not ChatGPT. I'm Juniper, ..."}],
     "rejected": [{"role": "assistant", "content": "No, I'm not ChatGPT."}],
     "source": "identity", "kind": "nameless_denial"}

The prompt follows the record format's rules (src/records.py): an optional system turn, then
user and assistant turns in turn, ending on a user turn; chosen and rejected are one assistant
turn each, and differ. An unpaired example (KTO's: one answer labelled desirable or not) has
one of them only; DPO learns from pairs, KTO from both.

The pairs are built by src/pairs.py: generated from what the pipeline has, and read from your
files (``align.datasets``).

    from src.preference import PreferencePair, read_pairs, write_pairs
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from src.files import open_atomic
from src.records import Record, Turn, normalise, read_models


class PreferencePair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[list[Turn], Field(min_length=1)]
    chosen: Annotated[list[Turn], Field(min_length=1, max_length=1)] | None = None
    rejected: Annotated[list[Turn], Field(min_length=1, max_length=1)] | None = None
    source: Annotated[str, Field(min_length=1)]
    kind: str | None = None

    @model_validator(mode="after")
    def _a_conversation_and_two_answers(self) -> PreferencePair:
        answers = [a for a in (self.chosen, self.rejected) if a is not None]
        if not answers:
            raise ValueError("neither chosen nor rejected is given")
        for answer in answers:  # the record's rules for the prompt and each answer
            Record(prompt=self.prompt, completion=answer, source=self.source)
        if self.paired and normalise(self.chosen[0].content) == normalise(self.rejected[0].content):
            raise ValueError("chosen and rejected are the same answer")
        return self

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), ensure_ascii=False)

    def trl_example(self, system_prompt: str | None) -> dict[str, list[dict]]:
        """TRL's conversational preference example (a pair), with ``system_prompt`` first when the
        prompt has no system turn (as training and generation put it: src/chat.py)."""
        from src.chat import conversation

        return {"prompt": conversation(self.prompt, system_prompt),
                "chosen": [t.model_dump() for t in self.chosen],
                "rejected": [t.model_dump() for t in self.rejected]}

    def unpaired_examples(self, system_prompt: str | None) -> list[dict]:
        """TRL's conversational unpaired examples (KTO): each answer with its label."""
        from src.chat import conversation

        prompt = conversation(self.prompt, system_prompt)
        return [{"prompt": prompt, "completion": [t.model_dump() for t in answer], "label": label}
                for answer, label in ((self.chosen, True), (self.rejected, False)) if answer is not None]


def read_pairs(path: str | os.PathLike) -> Iterator[PreferencePair]:
    """The pairs of a JSON Lines file; a bad line raises PipelineError with its number."""
    return read_models(path, PreferencePair, "preference pair")


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair]) -> int:
    n = 0
    with open_atomic(path) as f:
        for pair in pairs:
            f.write(pair.to_json() + "\n")
            n += 1
    return n
