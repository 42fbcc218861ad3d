"""The record format shared by every stage, and its JSON Lines I/O.

A record is TRL's conversational prompt/completion form plus its source:

    {"prompt": [{"role": "system", "content": ...}?, {"role": "user", "content": ...}],
     "completion": [{"role": "assistant", "content": ...}],
     "source": "orca"}

A multi-turn conversation keeps its earlier turns in the prompt (user, assistant, user, ...);
its last reply is the completion, and training supervises every assistant turn (src/chat.py).

Records may carry a ``group`` (identity data: the question template); ``data_split``
keeps a whole group on one side of the split, and ``merge_data`` drops the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.errors import PipelineError
from src.files import open_atomic


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(min_length=1)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Annotated[list[Turn], Field(min_length=1)]
    completion: Annotated[list[Turn], Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)]
    group: str | None = None

    @model_validator(mode="after")
    def _one_conversation(self) -> Record:
        """A system turn only first; then user and assistant turns in turn, the prompt ending on a
        user turn (earlier replies of a multi-turn conversation stay in it); one reply completes it."""
        roles = [t.role for t in self.prompt]
        body = roles[1:] if roles[0] == "system" else roles
        if not body or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)) \
                or body[-1] != "user":
            raise ValueError("prompt turns must be an optional system turn, then user and assistant "
                             "turns in turn, ending with a user turn")
        if [t.role for t in self.completion] != ["assistant"]:
            raise ValueError("completion must be one assistant turn")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), ensure_ascii=False)


def make_record(user: str, assistant: str, source: str, system: str = "",
                group: str | None = None) -> Record:
    """A single-turn record; the system turn is left out when ``system`` is empty."""
    prompt = [Turn(role="system", content=system)] if system else []
    prompt.append(Turn(role="user", content=user))
    return Record(prompt=prompt, completion=[Turn(role="assistant", content=assistant)],
                  source=source, group=group)


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Unicode-normalised, case-folded text with runs of whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def prompt_key(record: Record) -> str:
    """The normalised user turns of a record: two records with the same key ask the same thing.

    System turns are left out, so a question asked under two system prompts is still one prompt.
    """
    return turns_key(record.prompt)


def turns_key(turns: Iterable[Turn]) -> str:
    """``prompt_key`` of a prompt alone (its turns, before any answer)."""
    return "\n".join(normalise(t.content) for t in turns if t.role == "user")


def stable_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``text`` and ``seed`` alone (not by Python's hash seed)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_jsonl(path: str | os.PathLike) -> Iterator[Record]:
    """Yield the records of a JSON Lines file; a bad line raises PipelineError with its number."""
    return read_models(path, Record, "record")


def read_models(path: str | os.PathLike, model: type[BaseModel], what: str) -> Iterator:
    """Yield each line of a JSON Lines file as ``model``; a bad line raises PipelineError naming the
    file, the line's number and "not a valid ``what``"."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PipelineError(f"{path}:{lineno}: invalid UTF-8 ({err.reason})") from err
            if not line.strip():
                continue
            try:
                yield model.model_validate_json(line)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                detail = f"{where}: {first['msg']}" if where else first["msg"]
                raise PipelineError(f"{path}:{lineno}: not a valid {what} ({detail})") from err


def write_jsonl(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Stream records to a JSON Lines file (atomically); return how many were written."""
    n = 0
    with open_atomic(path) as f:
        for r in records:
            f.write(r.to_json() + "\n")
            n += 1
    return n
