"""Reading a source of training data in any of the common formats, as records.

A source is a local file (``.jsonl``, ``.json`` holding a list, ``.parquet`` or ``.csv``) in one
of FORMATS. Each row becomes a conversation of system/user/assistant turns, and that a record
whose prompt holds every turn before the last assistant reply (earlier replies included) and
whose completion is that reply; training puts the loss on every assistant turn (src/chat.py).
A row that cannot become a record is dropped and counted by reason (DROP_REASONS); a file that
is not what its format says is a PipelineError naming the file and the line or column. A line
(JSON Lines) or row (CSV) over ``line_cap(max_chars)`` is dropped as too long without being
parsed, so one huge line costs at most the cap in memory.

    from src.formats import read_source
    records, metrics = read_source(spec, "support")   # spec: a DatasetSpec of params.yaml

Only the rows of the seeded subset are parsed; JSON Lines, CSV and parquet files stream, so
memory stays bounded however large the file (a ``.json`` list is read whole).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from src.errors import PipelineError
from src.raw import iter_rows, open_parquet, subset_indices
from src.records import Record, Turn

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
TEXT, CONVERSATION = "text", "conversation"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str = TEXT  # TEXT: a string; CONVERSATION: a list of turns (or a JSON string of one)
    required: bool = True


# The fields each format reads, by their usual column names (params' ``columns`` renames them).
FORMAT_FIELDS: dict[str, tuple[Field, ...]] = {
    "records": (),  # the pipeline's own record lines (src/records.py), e.g. generate_identity_data's
    "alpaca": (Field("instruction"), Field("input", required=False), Field("output"),
               Field("system", required=False)),
    "platypus": (Field("instruction"), Field("input", required=False), Field("output")),
    "orca": (Field("system_prompt", required=False), Field("question"), Field("response")),
    "sharegpt": (Field("conversations", CONVERSATION), Field("system", required=False)),
    "messages": (Field("messages", CONVERSATION),),
    "prompt_completion": (Field("prompt", CONVERSATION), Field("completion", CONVERSATION)),
}
# How each conversation format names its roles.
ROLES = {
    "sharegpt": {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                 "chatgpt": "assistant", "model": "assistant", "system": "system"},
    "messages": {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"},
    "prompt_completion": {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"},
}
TURN_KEYS = {"sharegpt": ("from", "value")}  # other formats: role, content

DROP_REASONS = ("wrong_type", "bad_json", "unknown_role", "no_user_turn", "no_assistant_reply", "empty_reply",
                "empty_turn", "turn_order", "too_long", "nul_char", "invalid_unicode")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A line or CSV row longer than this many bytes (characters, for CSV) per ``max_chars`` character,
# plus LINE_SLACK, is dropped as too long unparsed: the most JSON text one character takes is 12
# bytes (an escaped surrogate pair), and the slack leaves room for keys, quotes and unread fields.
LINE_BYTES_PER_CHAR, LINE_SLACK = 16, 2**20


def line_cap(max_chars: int) -> int:
    """The longest line (bytes) or CSV row (characters) a source with ``max_chars`` parses."""
    return LINE_BYTES_PER_CHAR * max_chars + LINE_SLACK


def check_columns(source: str, fmt: str, columns: dict[str, str]) -> None:
    """``columns`` renames only fields ``fmt`` reads (a PipelineError names the others)."""
    fields = [f.name for f in FORMAT_FIELDS[fmt]]
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise PipelineError(f"params.yaml: datasets.{source}.columns: {', '.join(unknown)} is not a field of "
                            f"format {fmt} (its fields: {', '.join(fields) or 'none; records are read as they are'})")


class Drop(Exception):
    """A row that cannot become a record, with the reason it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _text(value, missing: str, blank: str) -> str | None:
    """A text field stripped; None (null or absent) raises Drop(missing), blank Drop(blank); a
    non-string Drop('wrong_type'). ``missing``/``blank`` of None make the field optional."""
    if value is None:
        if missing:
            raise Drop(missing)
        return None
    if not isinstance(value, str):
        raise Drop("wrong_type")
    value = value.strip()
    if not value and blank:
        raise Drop(blank)
    return value or None


def _json_cell(text: str, fmt: str):
    """A conversation held as JSON text (a CSV or parquet string cell), parsed: Drop('bad_json')
    when it cannot be (invalid, or nested too deeply). For prompt_completion, text that is not a
    JSON list of objects with a ``role`` is returned as it is: TRL's standard (plain text) form."""
    plain = fmt == "prompt_completion"
    if plain and not text.lstrip().startswith("["):
        return text
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if plain:
            return text
        raise Drop("bad_json") from None
    if plain and not (isinstance(value, list) and value
                      and all(isinstance(t, dict) and "role" in t for t in value)):
        return text
    return value


def _turns(value, fmt: str) -> list[tuple[str, str]]:
    """A conversation field as (role, stripped text) pairs; a JSON string (a CSV cell) is parsed;
    prompt_completion's plain text is one turn of role ``text``."""
    if value is None:
        return []
    if isinstance(value, str):
        value = _json_cell(value, fmt)
        if isinstance(value, str):
            return [("text", value.strip())]
    if not isinstance(value, (list, tuple)):
        raise Drop("wrong_type")
    role_key, content_key = TURN_KEYS.get(fmt, ("role", "content"))
    turns = []
    for turn in value:
        if not isinstance(turn, dict):
            raise Drop("wrong_type")
        role, content = turn.get(role_key), turn.get(content_key)
        if not isinstance(role, str) or not (content is None or isinstance(content, str)):
            raise Drop("wrong_type")
        if role.strip().lower() not in ROLES[fmt]:
            raise Drop("unknown_role")
        turns.append((ROLES[fmt][role.strip().lower()], (content or "").strip()))
    return turns


def _single_turn(system: str | None, user: str, assistant: str) -> list[tuple[str, str]]:
    return ([("system", system)] if system else []) + [("user", user), ("assistant", assistant)]


def conversation_of(fmt: str, row: dict) -> list[tuple[str, str]]:
    """The turns of one row (by the format's own field names); raises Drop."""
    if fmt in ("alpaca", "platypus"):
        instruction = _text(row.get("instruction"), "no_user_turn", "no_user_turn")
        extra = _text(row.get("input"), "", "")
        output = _text(row.get("output"), "no_assistant_reply", "empty_reply")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return _single_turn(_text(row.get("system"), "", ""), user, output)
    if fmt == "orca":
        return _single_turn(_text(row.get("system_prompt"), "", ""),
                            _text(row.get("question"), "no_user_turn", "no_user_turn"),
                            _text(row.get("response"), "no_assistant_reply", "empty_reply"))
    if fmt == "sharegpt":
        system = _text(row.get("system"), "", "")
        return ([("system", system)] if system else []) + _turns(row.get("conversations"), fmt)
    if fmt == "messages":
        return _turns(row.get("messages"), fmt)
    prompt, completion = _turns(row.get("prompt"), fmt), _turns(row.get("completion"), fmt)
    prompt = [("user" if r == "text" else r, t) for r, t in prompt]
    completion = [("assistant" if r == "text" else r, t) for r, t in completion]
    if not completion:
        raise Drop("no_assistant_reply")
    if any(r != "assistant" for r, _ in completion):
        raise Drop("turn_order")  # a completion holds the reply only
    return prompt + completion


def _check_chars(texts: Iterable[str]) -> None:
    """Drop('nul_char') for text holding a NUL character (a sign of a binary or UTF-16 file read
    as text), Drop('invalid_unicode') for a lone surrogate (JSON's ``"\\ud800"``, which no UTF-8
    text can hold): the same for every file kind."""
    for text in texts:
        if "\x00" in text:
            raise Drop("nul_char")
        if _SURROGATE.search(text):
            raise Drop("invalid_unicode")


def to_record(turns: list[tuple[str, str]], source: str, max_chars: int) -> tuple[Record, int]:
    """A checked conversation as a record, and how many unanswered user turns were cut from its end.

    A blank system turn is left out; a system turn after the first, two user or two assistant
    turns in a row, or a reply before any question is Drop('turn_order')."""
    _check_chars(t for _, t in turns)
    turns = [(r, t) for r, t in turns if r != "system" or t]
    if not any(r == "user" and t for r, t in turns):
        raise Drop("no_user_turn")
    if not any(r == "assistant" for r, _ in turns):
        raise Drop("no_assistant_reply")
    if any(r == "assistant" and not t for r, t in turns):
        raise Drop("empty_reply")
    if any(not t for _, t in turns):
        raise Drop("empty_turn")
    last_reply = max(i for i, (r, _) in enumerate(turns) if r == "assistant")
    trimmed = len(turns) - 1 - last_reply
    turns = turns[:last_reply + 1]
    try:  # the record's own check of the turn order
        record = Record(prompt=[Turn(role=r, content=t) for r, t in turns[:-1]],
                        completion=[Turn(role="assistant", content=turns[-1][1])], source=source)
    except ValidationError:
        raise Drop("turn_order") from None
    if sum(len(t) for _, t in turns) > max_chars:
        raise Drop("too_long")
    return record, trimmed


# --- Files -------------------------------------------------------------------------------------

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
                                               or pa.types.is_string(col_type) or pa.types.is_null(col_type)):
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


def _own_names(row: dict, where: str, path, fmt: str, fields: Sequence[Field], columns: dict[str, str]) -> dict:
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
    fields = FORMAT_FIELDS[spec.format]
    check_columns(source, spec.format, spec.columns)
    cap = line_cap(spec.max_chars)
    rows = open_rows(spec.path, fields, spec.columns, cap)
    indices = subset_indices(rows.count, spec.subset_rows, spec.subset_fraction, spec.seed)
    log.info("%s: %d rows (%s); reading %d of them", spec.path, rows.count, spec.format, len(indices))
    dropped = Counter(dict.fromkeys(DROP_REASONS, 0))
    counts = Counter()

    def records() -> Iterator[Record]:
        for where, row in rows.read(indices):
            try:
                if isinstance(row, Drop):
                    raise row
                if spec.format == "records":
                    _check_chars(_record_texts(row))
                    record = _record_line(row, where, spec.path)
                    if sum(len(t.content) for t in (*record.prompt, *record.completion)) > spec.max_chars:
                        raise Drop("too_long")
                    record, trimmed = record.model_copy(update={"source": source}), 0
                else:
                    row = _own_names(row, where, spec.path, spec.format, fields, spec.columns)
                    if any(isinstance(v, str) and len(v) > cap for v in row.values()):
                        raise Drop("too_long")  # a parquet cell as long as a capped line: never parsed
                    turns = conversation_of(spec.format, row)
                    record, trimmed = to_record(turns, source, spec.max_chars)
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


def _record_texts(row: dict) -> list[str]:
    """The turn contents of a pipeline record line, before it is validated."""
    return [t["content"] for key in ("prompt", "completion") if isinstance(row.get(key), list)
            for t in row[key] if isinstance(t, dict) and isinstance(t.get("content"), str)]


def _record_line(row: dict, where: str, path) -> Record:
    try:
        return Record.model_validate(row)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PipelineError(f"{path}: {where}: not a valid record ({loc + ': ' if loc else ''}{first['msg']})") from err
