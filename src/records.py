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
import shutil
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.errors import PipelineError


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
                yield Record.model_validate_json(line)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                detail = f"{where}: {first['msg']}" if where else first["msg"]
                raise PipelineError(f"{path}:{lineno}: not a valid record ({detail})") from err


def os_reason(err: Exception, *ours: Path) -> str:
    """An OS error's reason, naming the path it concerns when that is not one of ``ours``; for
    safetensors' own write error, the OS message inside it."""
    if not isinstance(err, OSError):
        found = re.search(r'error: (.+?) \(os error \d+\)|message: "([^"]+)"', str(err))
        return next(filter(None, found.groups())) if found else " ".join(str(err).split())
    reason = err.strerror or str(err)
    if err.filename and Path(err.filename) not in ours:
        reason += f": {err.filename}"
    return reason


@contextmanager
def open_atomic(path: str | os.PathLike, sync: bool = False) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed into place only when complete,
    so a reader (or DVC) never sees half a file; on any error the temporary file is removed.
    ``sync`` flushes it to disk before the rename (for files that seal other files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise PipelineError(f"{path}: cannot write ({os_reason(err, path, tmp)})") from err
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A folder written as ``<name>.partial`` and renamed to ``path`` only when the block ends
    without error, so a stage stopped midway (even by SIGKILL) leaves no complete-looking
    output; a write error (disk full, read-only) becomes one line naming the folder."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        yield partial
        shutil.rmtree(path, ignore_errors=True)
        os.replace(partial, path)
    except Exception as err:  # safetensors reports a failed write (disk full) as SafetensorError
        if not isinstance(err, OSError) and type(err).__name__ != "SafetensorError":
            raise
        raise PipelineError(f"{path}: cannot write ({os_reason(err, path, partial)})") from err
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_jsonl(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Stream records to a JSON Lines file (atomically); return how many were written."""
    n = 0
    with open_atomic(path) as f:
        for r in records:
            f.write(r.to_json() + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, data: dict, sync: bool = False) -> None:
    """Write a small metrics/report JSON file (atomically; ``sync``: see open_atomic)."""
    with open_atomic(path, sync) as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a small JSON file another stage wrote; a missing or broken one names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path}: cannot be read ({err})") from err


def read_yaml(path: str | os.PathLike):
    """Read a YAML file the repository ships (probes, questions); an error is one line naming it."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as err:
        raise PipelineError(f"{path}: cannot be read ({os_reason(err, Path(path))})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise PipelineError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from err


WHOLE_HASH_LIMIT = 64 * 2**20  # bigger files are hashed by size, head and tail
SAMPLE_BYTES = 8 * 2**20


def file_digest(path: Path, sampled: bool = False) -> str:
    """sha256 of a file; ``sampled``: for a file over 64 MiB, of its size and its first and last
    8 MiB (weights of 13 GB hash in milliseconds; data files are always hashed whole)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if not sampled or size <= WHOLE_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            h.update(f.read(SAMPLE_BYTES))
            f.seek(size - SAMPLE_BYTES)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()
