"""Reading a source of training data, an entry of ``datasets`` in params.yaml, as records.

A source is a local file (``.jsonl``, ``.json`` holding a list, ``.parquet`` or ``.csv``) in one
of the formats of src/formats.py, which turns each row into a record or a drop counted by reason.
A file that is not what its format says is a PipelineError naming the file and the line or column.
A line (JSON Lines) or row (CSV) over ``line_cap(max_chars)`` is dropped as too long without
being parsed, so one huge line costs at most the cap in memory.

    from src.sources import read_source
    records, metrics = read_source(spec, "support")   # spec: a DatasetSpec of params.yaml

Only the rows of the seeded subset are parsed; JSON Lines, CSV and parquet files stream, so
memory stays bounded however large the file (a ``.json`` list is read whole). process_source
is process_data's work on one source: its records written, its row accounting returned.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.config import INPUT_DIRS, Params
from src.errors import PipelineError
from src.formats import (
    CONVERSATION,
    DROP_REASONS,
    TEXT,
    Drop,
    Field,
    check_columns,
    format_of,
    record_of_line,
    to_record,
)
from src.raw import iter_rows, open_parquet, subset_indices
from src.records import Record, write_jsonl

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

# A line or CSV row longer than this many bytes (characters, for CSV) per ``max_chars`` character,
# plus LINE_SLACK, is dropped as too long unparsed: the most JSON text one character takes is 12
# bytes (an escaped surrogate pair), and the slack leaves room for keys, quotes and unread fields.
LINE_BYTES_PER_CHAR, LINE_SLACK = 16, 2**20


def line_cap(max_chars: int) -> int:
    """The longest line (bytes) or CSV row (characters) a source with ``max_chars`` parses."""
    return LINE_BYTES_PER_CHAR * max_chars + LINE_SLACK


@dataclass
class Rows:
    """A file's row count and a reader of its rows at sorted indices, as (where, row) pairs:
    ``where`` names the row in errors (``line 7``, ``item 7``, ``row 7``); ``row`` is a Drop for
    a row dropped unparsed (a line over the cap)."""

    count: int
    read: Callable[[np.ndarray], Iterator[tuple[str, dict | Drop]]]


def _jsonl_lines(path: Path, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets of the non-blank lines of a JSON Lines file, and for each blank line how many
    non-blank ones precede it (for line numbers): one pass, nothing parsed, at most ``cap`` bytes
    of a line in memory, 8 bytes an indexed line. A line over ``cap`` counts as non-blank."""
    offsets, blanks, pos = array("q"), array("q"), 0
    with path.open("rb") as f:
        while line := f.readline(cap + 1):
            size, piece = len(line), line
            while size > cap and not piece.endswith(b"\n") and (piece := f.readline(2**20)):
                size += len(piece)  # the rest of a long line, skipped a MiB at a time
            if size > cap or line.strip():
                offsets.append(pos)
            else:
                blanks.append(len(offsets))
            pos += size
    return np.frombuffer(offsets, dtype=np.int64), np.frombuffer(blanks, dtype=np.int64)


def _jsonl_rows(path: Path, cap: int) -> Rows:
    offsets, blanks = _jsonl_lines(path, cap)

    def read(indices: np.ndarray) -> Iterator[tuple[str, dict | Drop]]:
        numbers = indices + 1 + np.searchsorted(blanks, indices, side="right")
        with path.open("rb") as f:
            for i, number in zip(indices.tolist(), numbers.tolist()):
                f.seek(offsets[i])
                raw = f.readline(cap + 1)
                if len(raw) > cap:
                    yield f"line {number}", Drop("too_long")
                    continue
                row = _parse_json(raw, path, number)
                if not isinstance(row, dict):
                    raise PipelineError(f"{path}:{number}: a JSON {type(row).__name__}, not an object; each "
                                        "line must be one record")
                yield f"line {number}", row

    return Rows(len(offsets), read)


def _parse_json(raw: bytes, path: Path, line: int | None = None):
    """``raw`` parsed; its errors name the file and the line (``line``: where ``raw`` starts)."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}{f':{line}' if line else ''}: invalid UTF-8 ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}:{(line or 1) + err.lineno - 1}: not valid JSON ({err.msg}, "
                            f"column {err.colno})") from err
    except RecursionError as err:
        raise PipelineError(f"{path}{f':{line}' if line else ''}: JSON nested too deeply to read "
                            "(arrays or objects about 1000 levels within each other)") from err


def _json_rows(path: Path) -> Rows:
    data = _parse_json(path.read_bytes(), path)
    if not isinstance(data, list):
        raise PipelineError(f"{path}: a JSON {type(data).__name__}, not a list of records "
                            "(a file of one record per line is .jsonl)")

    def read(indices: np.ndarray) -> Iterator[tuple[str, dict]]:
        for i in indices:
            if not isinstance(data[i], dict):
                raise PipelineError(f"{path}: item {i}: not a JSON object ({type(data[i]).__name__})")
            yield f"item {i}", data[i]

    return Rows(len(data), read)


_CSV_RUN, _CSV_OTHER = re.compile(r'[^"\r\n]{2,}'), re.compile(r'[^",\r\n]')


def _skeleton(text: str) -> str:
    """CSV text that the reader parses through the same states, in few characters: quotes and
    line ends kept, each run of other characters cut to its first and last, all but commas as x."""
    return _CSV_OTHER.sub("x", _CSV_RUN.sub(lambda m: m[0][0] + m[0][-1], text))


class _CappedLines:
    """The lines of a CSV file (opened with ``newline=""``) for csv.reader, at most ``cap``
    characters of a row kept: past that, the rest of the row goes to the reader as its skeleton,
    so the reader still finds where the row ends, and ``over`` is set. ``next_row()`` after each row."""

    def __init__(self, f, cap: int):
        self.f, self.cap, self.size, self.over, self.ahead = f, cap, 0, False, ""

    def next_row(self) -> None:
        self.size, self.over = 0, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        budget = max(self.cap - self.size, 0) + 1
        line, self.ahead = self.ahead + self.f.readline(max(budget - len(self.ahead), 1)), ""
        if not line:
            raise StopIteration
        self.size += len(line)
        if self.size <= self.cap and not self.over:
            return line
        self.over, parts = True, [_skeleton(line)]
        while not line.endswith(("\n", "\r")) and (line := self.f.readline(2**20)):
            parts.append(_skeleton(line))  # the rest of the line, a MiB at a time
        if line.endswith("\r"):  # a \r\n that the MiB boundary split
            self.ahead = self.f.read(1)
            if self.ahead == "\n":
                parts.append(self.ahead)
                self.ahead = ""
        return "".join(parts)


def _csv_rows(path: Path, fields: Sequence[Field], columns: dict[str, str], cap: int) -> Rows:
    """The rows of a CSV file (a UTF-8 BOM, as Excel writes, is skipped); a row over ``cap``
    characters is a Drop('too_long'); a column read twice in the header is a PipelineError."""
    needed = [columns.get(f.name, f.name) for f in fields if f.required]
    read_columns = [columns.get(f.name, f.name) for f in fields]
    # csv's own limit (131072 characters a cell, process-wide) raised to the cap: a longer cell is
    # parsed and its row kept or dropped by max_chars; a row over the cap never reaches the parser.
    csv.field_size_limit(max(csv.field_size_limit(), cap))

    def reader(f) -> tuple[list[str], Iterator[tuple[int, list[str] | Drop]]]:
        lines = _CappedLines(f, cap)
        rows = csv.reader(lines, strict=True)
        header = next(rows, None)
        if not header:
            raise PipelineError(f"{path}: no header line")
        if lines.over:
            raise PipelineError(f"{path}: a header line over {cap} characters")

        def each() -> Iterator[tuple[int, list[str] | Drop]]:
            lines.next_row()
            for row in rows:
                yield rows.line_num, Drop("too_long") if lines.over else row
                lines.next_row()

        return header, each()

    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header, rows = reader(f)
            missing = [c for c in needed if c not in header]
            if missing:
                raise PipelineError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)})")
            twice = [c for c in read_columns if header.count(c) > 1]
            if twice:
                raise PipelineError(f"{path}: column '{twice[0]}' appears {header.count(twice[0])} times in the "
                                    "header (rename all but one)")
            count = 0
            for line, row in rows:
                if not isinstance(row, Drop) and len(row) != len(header):
                    raise PipelineError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                count += 1
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: invalid UTF-8 ({err.reason})") from err
    except csv.Error as err:
        raise PipelineError(f"{path}: not a readable CSV file ({err})") from err

    def read(indices: np.ndarray) -> Iterator[tuple[str, dict | Drop]]:
        wanted = iter(indices.tolist())
        nxt = next(wanted, None)
        with path.open(encoding="utf-8-sig", newline="") as f:
            _, rows = reader(f)
            for i, (line, row) in enumerate(rows):
                if i == nxt:
                    yield f"line {line}", row if isinstance(row, Drop) else dict(zip(header, row))
                    nxt = next(wanted, None)
                    if nxt is None:
                        return

    return Rows(count, read)


def _parquet_rows(path: Path, fields: Sequence[Field], columns: dict[str, str]) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names if path.is_file() and path.stat().st_size else []
    except Exception:  # noqa: BLE001 - open_parquet below gives the one-line reason
        names = []
    present = [f for f in fields if f.required or columns.get(f.name, f.name) in names]
    wanted = [columns.get(f.name, f.name) for f in present]
    text = [columns.get(f.name, f.name) for f in present if f.kind == TEXT]
    pf = open_parquet(path, wanted, text_columns=text)
    for field in present:
        name = columns.get(field.name, field.name)
        col_type = pf.schema_arrow.field(name).type
        if field.kind == CONVERSATION and not (pa.types.is_list(col_type) or pa.types.is_large_list(col_type)
                                               or pa.types.is_string(col_type) or pa.types.is_large_string(col_type)
                                               or pa.types.is_null(col_type)):
            raise PipelineError(f"{path}: column '{name}' has type {col_type}, expected a list of turns")

    def read(indices: np.ndarray) -> Iterator[tuple[str, dict]]:
        for i, row in zip(indices, iter_rows(path, pf, wanted, indices, text_columns=text)):
            yield f"row {i}", row

    return Rows(pf.metadata.num_rows, read)


def open_rows(path: str | os.PathLike, fields: Sequence[Field], columns: dict[str, str], cap: int) -> Rows:
    """The rows of a source file, read by its suffix; PipelineError when it is none of SUFFIXES,
    is missing, or is not what its suffix says. A JSON Lines line over ``cap`` bytes, or a CSV row
    over ``cap`` characters, is read as a Drop('too_long'), unparsed."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: a folder, not a data file")
    if path.suffix not in SUFFIXES:
        raise PipelineError(f"{path}: unknown file type '{path.suffix}' (one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return _parquet_rows(path, fields, columns)
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty file (0 bytes)")
    if path.suffix == ".jsonl":
        return _jsonl_rows(path, cap)
    if path.suffix == ".json":
        return _json_rows(path)
    return _csv_rows(path, fields, columns, cap)


def own_names(row: dict, where: str, path, fmt: str, fields: Sequence[Field], columns: dict[str, str]) -> dict:
    """A row keyed by the format's field names; a required field missing from it is a PipelineError."""
    out = {}
    for field in fields:
        column = columns.get(field.name, field.name)
        if column not in row:
            if field.required:
                raise PipelineError(f"{path}: {where}: no '{column}' field (format {fmt} needs it)")
            continue
        out[field.name] = row[column]
    return out


def read_source(spec, source: str) -> tuple[Iterator[Record], Callable[[], dict]]:
    """The records of the seeded subset of a source (a ``DatasetSpec``), as a lazy iterator, and a
    function returning the row accounting once the iterator is spent."""
    fmt = format_of(spec.format)
    check_columns(source, spec.format, spec.columns)
    cap = line_cap(spec.max_chars)
    rows = open_rows(spec.path, fmt.fields, spec.columns, cap)
    indices = subset_indices(rows.count, spec.subset_rows, spec.subset_fraction, spec.seed)
    log.info("%s: %d rows (%s); reading %d of them", spec.path, rows.count, spec.format, len(indices))
    dropped = Counter(dict.fromkeys(DROP_REASONS, 0))
    counts = Counter()

    def records() -> Iterator[Record]:
        for where, row in rows.read(indices):
            try:
                if isinstance(row, Drop):
                    raise row
                if fmt.convert is None:
                    record, trimmed = record_of_line(row, where, spec.path, source, spec.max_chars), 0
                else:
                    row = own_names(row, where, spec.path, spec.format, fmt.fields, spec.columns)
                    if any(isinstance(v, str) and len(v) > cap for v in row.values()):
                        raise Drop("too_long")  # a parquet cell as long as a capped line: never parsed
                    record, trimmed = to_record(fmt.conversation(row), source, spec.max_chars)
            except Drop as drop:
                dropped[drop.reason] += 1
                continue
            counts["unanswered_turns_cut"] += trimmed
            counts["multi_turn"] += any(t.role == "assistant" for t in record.prompt)
            yield record

    def metrics() -> dict:
        return {"rows_in_file": rows.count, "rows_in": len(indices), "rows_out": len(indices) - sum(dropped.values()),
                "dropped": dict(dropped), "multi_turn_records": counts["multi_turn"],
                "unanswered_turns_cut": counts["unanswered_turns_cut"]}

    return records(), metrics


def process_source(cfg: Params, source: str, folder: Path | None = None) -> dict:
    """Read one source into ``<processed_dir>/<source>.jsonl`` (or the same name in ``folder``);
    return its row accounting."""
    spec = cfg.datasets[source]
    _warn_if_untracked(source, spec.path, cfg.paths.identity)
    records, accounting = read_source(spec, source)
    out = cfg.paths.processed_file(source, folder)
    write_jsonl(out, tqdm(records, desc=spec.path, unit="row", mininterval=1))
    metrics = accounting()
    log.info("%s: wrote %d records (%d multi-turn, %d unanswered last turns cut); dropped %s", out,
             metrics["rows_out"], metrics["multi_turn_records"], metrics["unanswered_turns_cut"],
             {k: v for k, v in metrics["dropped"].items() if v} or "none")
    return metrics


def _warn_if_untracked(source: str, path: str, identity: str) -> None:
    """DVC reruns process_data when a file under INPUT_DIRS or the identity records change (its deps
    in dvc.yaml); a file elsewhere is read, but a change to it alone reruns nothing."""
    file = Path(path).resolve()
    if file != Path(identity).resolve() and not any(file.is_relative_to(Path(d).resolve()) for d in INPUT_DIRS):
        log.warning("datasets.%s.path: %s is outside %s: DVC will not rerun process_data when only that file "
                    "changes; put it under %s (docs/data.md)", source, path, ", ".join(INPUT_DIRS), INPUT_DIRS[0])
