"""Raw parquet reading: subsets, bounded reads, and one-line errors for every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from src.errors import PipelineError
from src.raw import iter_rows, open_parquet, subset_indices
from tests.conftest import params_file, run_cli

COLUMNS = ("system_prompt", "question", "response")


ORCA_SCHEMA = pa.schema([(name, pa.string()) for name in ("id", *COLUMNS)])


def orca_table(n: int = 30) -> pa.Table:
    return pa.table(schema=ORCA_SCHEMA, data={
        "id": [f"t0.{i}" for i in range(n)],
        "system_prompt": ["" if i % 3 else "Be brief." for i in range(n)],
        "question": [f"What is {i} + {i}?" for i in range(n)],
        "response": [f"{i} + {i} = {2 * i}." for i in range(n)],
    })


def test_subset_indices_count_fraction_all():
    rows = subset_indices(1000, rows=50, fraction=None, seed=1)
    assert len(rows) == 50 == len(set(rows.tolist()))
    assert (np.diff(rows) > 0).all() and rows.min() >= 0 and rows.max() < 1000
    assert (rows == subset_indices(1000, rows=50, fraction=None, seed=1)).all()
    assert not (rows == subset_indices(1000, rows=50, fraction=None, seed=2)).all()
    assert len(subset_indices(1000, rows=None, fraction=0.25, seed=1)) == 250
    assert len(subset_indices(10, rows=50, fraction=None, seed=1)) == 10
    assert (subset_indices(7, rows=None, fraction=None, seed=1) == np.arange(7)).all()


def test_iter_rows_reads_only_groups_with_selected_rows(tmp_path, monkeypatch):
    path = tmp_path / "o.parquet"
    pq.write_table(orca_table(30), path, row_group_size=10)
    pf = open_parquet(path, COLUMNS)
    read = []
    original = pf.iter_batches
    monkeypatch.setattr(pf, "iter_batches", lambda **kw: read.extend(kw["row_groups"]) or original(**kw))
    rows = list(iter_rows(path, pf, COLUMNS, np.array([3, 7, 25]), batch_size=4))
    assert read == [0, 2]
    assert [r["question"] for r in rows] == ["What is 3 + 3?", "What is 7 + 7?", "What is 25 + 25?"]
    assert set(rows[0]) == set(COLUMNS)
    every = list(iter_rows(path, pf, COLUMNS, np.arange(30), batch_size=7))
    assert [r["question"] for r in every] == orca_table(30).column("question").to_pylist()


def test_dictionary_encoded_and_all_null_columns_are_read_as_text(tmp_path):
    """Writers often dictionary-encode repetitive text (Orca's system prompts) and type a column
    that is empty everywhere as null (Platypus's ``input`` in a slice): both are text to us."""
    from src.formats import conversation_of, to_record

    n = 12
    table = pa.table({"id": [f"t0.{i}" for i in range(n)],
                      "system_prompt": pa.array([None] * n, pa.null()),
                      "question": pa.array([f"What is {i % 3} + 1?" for i in range(n)]).dictionary_encode(),
                      "response": [f"{i % 3 + 1}." for i in range(n)]})
    path = tmp_path / "o.parquet"
    pq.write_table(table, path, row_group_size=5)
    pf = open_parquet(path, COLUMNS)
    assert pa.types.is_dictionary(pf.schema_arrow.field("question").type)
    assert pa.types.is_null(pf.schema_arrow.field("system_prompt").type)
    rows = list(iter_rows(path, pf, COLUMNS, np.arange(n), batch_size=4))
    assert [r["question"] for r in rows] == [f"What is {i % 3} + 1?" for i in range(n)]
    assert {r["system_prompt"] for r in rows} == {None}
    record, _ = to_record(conversation_of("orca", rows[4]), "orca", max_chars=1000)
    assert [t.role for t in record.prompt] == ["user"] and record.prompt[0].content == "What is 1 + 1?"
    # the UTF-8 check still applies to dictionary-encoded text
    raw = pa.array([b"ok?"] * 6 + [b"bad \xff?"] * 6, pa.binary()).view(pa.string()).dictionary_encode()
    pq.write_table(table.set_column(2, "question", raw), path)
    with pytest.raises(PipelineError, match="row 6, column 'question': invalid UTF-8"):
        list(iter_rows(path, open_parquet(path, COLUMNS), COLUMNS, np.arange(n)))


def test_a_nul_character_is_read_as_it_is(tmp_path):
    """A NUL character is no file-level error: src/formats.py drops its row, counted as ``nul_char``,
    for every file kind alike (test_formats.py)."""
    table = orca_table()
    questions = table.column("question").to_pylist()
    questions[11] = "What is\x00 this?"
    path = tmp_path / "nul.parquet"
    pq.write_table(table.set_column(2, "question", pa.array(questions)), path)
    rows = list(iter_rows(path, open_parquet(path, COLUMNS), COLUMNS, np.arange(30)))
    assert len(rows) == 30 and rows[11]["question"] == "What is\x00 this?"


def _write_bad(tmp_path, kind: str):
    path = tmp_path / "bad.parquet"
    good = tmp_path / "good.parquet"
    pq.write_table(orca_table(), good)
    if kind == "missing":
        path = tmp_path / "absent.parquet"
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_rows":
        pq.write_table(orca_table(0), path)
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "corrupt":
        path.write_bytes(b"this is not parquet at all " * 40)
    elif kind == "no_column":
        pq.write_table(orca_table().drop_columns(["response"]), path)
    elif kind == "wrong_type":
        pq.write_table(orca_table().set_column(2, "question", pa.array(range(30))), path)
    elif kind == "utf8":
        table = orca_table()
        raw = [r.encode() for r in table.column("response").to_pylist()]
        raw[4] = b"caf\xe9 \xff"
        bad = pa.array(raw, pa.binary()).view(pa.string())
        pq.write_table(table.set_column(3, "response", bad), path)
    return path


BAD_FILES = {
    "missing": "file not found",
    "empty": "empty file (0 bytes)",
    "no_rows": "no rows",
    "truncated": "not a readable parquet file",
    "corrupt": "not a readable parquet file",
    "no_column": "missing column(s) response",
    "wrong_type": "column 'question' has type int64, expected string",
    "utf8": "row 4, column 'response': invalid UTF-8",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_raises_one_line_naming_file(tmp_path, kind):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(PipelineError) as exc:
        pf = open_parquet(path, COLUMNS)
        list(iter_rows(path, pf, COLUMNS, np.arange(pf.metadata.num_rows)))
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    assert BAD_FILES[kind] in message
    assert "\n" not in message


def _first_source(clone: Path, path: Path) -> None:
    """A source the stage reads first (sources go in name order), from ``path``."""
    raw = params_file(clone)
    raw["datasets"]["bad"] = {**raw["datasets"]["orca"], "path": path.name}
    (clone / "params.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_cli_exits_nonzero_with_one_line(clone, kind):
    """The stage's own command: exit 1, one `error:` line naming the file, no traceback."""
    path = _write_bad(clone, kind)
    _first_source(clone, path)
    proc = run_cli(["python", "-m", "src.stages.process_data"], clone)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path.name}: ")
    assert BAD_FILES[kind] in errors[0]
    assert "Traceback" not in proc.stderr


def test_debug_flag_adds_the_traceback(clone):
    _first_source(clone, _write_bad(clone, "corrupt"))
    debug = run_cli(["python", "-m", "src.stages.process_data", "--debug"], clone)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "error: bad.parquet: not a readable parquet" in debug.stderr
