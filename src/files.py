"""Files written whole or not at all, and read back with one-line errors: the I/O every stage
shares beyond its records (src/records.py).

``open_atomic`` writes a text file under a temporary name and renames it into place;
``output_folder`` does the same for a whole folder; ``write_json``, ``read_json`` and
``read_yaml`` are the small metrics, report and shipped YAML files; ``file_digest`` fingerprints
a file (sampled for big weights). An OS error becomes a ``PipelineError`` naming the file.

    from src.files import read_json, write_json
    write_json("data/metrics/x.json", {"rows": 3}); read_json("data/metrics/x.json")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from src.errors import PipelineError


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
