"""Bring your own data: every format and file kind a ``datasets`` entry can name, every reason
a row is dropped, every file-level error, and a user's file trained on by ``dvc exp run``."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from src.config import DatasetSpec
from src.errors import PipelineError
from src.formats import DROP_REASONS, FORMATS, conversation_of
from src.records import read_jsonl
from src.sources import line_cap, open_rows, read_source
from tests.conftest import params_file, repo_params, run_cli

SUPPORT = [  # a sharegpt file as support tools export it: system turn, several exchanges
    {"conversations": [
        {"from": "system", "value": "You are the support assistant of Acme Cloud."},
        {"from": "human", "value": "My deploy fails with error 137."},
        {"from": "gpt", "value": "Error 137 means the container ran out of memory. Raise the memory limit."},
        {"from": "human", "value": "How do I raise it?"},
        {"from": "gpt", "value": "Set memory: 2Gi under resources in acme.yaml, then deploy again."}]},
    {"conversations": [
        {"from": "human", "value": "Can I roll back a release?"},
        {"from": "gpt", "value": "Yes: run acme rollback with the release number."}]},
]


def roles(record) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in (*record.prompt, *record.completion)]


def source(path: Path, fmt: str, rows, **spec) -> tuple[list, dict]:
    """Write ``rows`` to ``path`` in its file kind, read it as a source; (records, metrics)."""
    write_rows(path, rows)
    records, metrics = read_source(DatasetSpec(path=str(path), format=fmt, **spec), "mine")
    records = list(records)
    return records, metrics()


def write_rows(path: Path, rows) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


# --- each format --------------------------------------------------------------------------------

def test_alpaca(tmp_path):
    rows = [{"instruction": "Sort these numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be cheerful."}]
    records, metrics = source(tmp_path / "a.jsonl", "alpaca", rows)
    assert [roles(r) for r in records] == [
        [("user", "Sort these numbers.\n\n3, 1, 2"), ("assistant", "1, 2, 3")],
        [("system", "Be cheerful."), ("user", "Say hi."), ("assistant", "Hi!")]]
    assert {r.source for r in records} == {"mine"}
    assert metrics["rows_in"] == metrics["rows_out"] == 2


def test_sharegpt_keeps_whole_conversations(tmp_path):
    records, metrics = source(tmp_path / "s.jsonl", "sharegpt", SUPPORT)
    first = records[0]
    assert [t.role for t in first.prompt] == ["system", "user", "assistant", "user"]
    assert first.completion[0].content.startswith("Set memory: 2Gi")
    assert roles(first) == [("system" if t["from"] == "system" else "user" if t["from"] == "human" else "assistant",
                             t["value"]) for t in SUPPORT[0]["conversations"]]
    assert metrics["multi_turn_records"] == 1


def test_messages_and_its_system_turn(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
                          {"role": "assistant", "content": "6"}]}]
    records, _ = source(tmp_path / "m.json", "messages", rows)
    assert roles(records[0]) == [(m["role"], m["content"]) for m in rows[0]["messages"]]


def test_prompt_completion_in_trl_standard_and_conversational_forms(tmp_path):
    rows = [{"prompt": "The sky is", "completion": " blue."},
            {"prompt": [{"role": "user", "content": "Name a colour."}],
             "completion": [{"role": "assistant", "content": "Green."}]}]
    records, _ = source(tmp_path / "p.jsonl", "prompt_completion", rows)
    assert [roles(r) for r in records] == [[("user", "The sky is"), ("assistant", "blue.")],
                                           [("user", "Name a colour."), ("assistant", "Green.")]]


def test_orca_and_platypus_files_give_the_records_of_their_own_readers(tmp_path):
    orca = [{"id": "1", "system_prompt": "", "question": "Q?", "response": "A."},
            {"id": "2", "system_prompt": "Be kind.", "question": "Q2?", "response": "A2."}]
    records, _ = source(tmp_path / "o.parquet", "orca", orca)
    assert [roles(r) for r in records] == [[("user", "Q?"), ("assistant", "A.")],
                                           [("system", "Be kind."), ("user", "Q2?"), ("assistant", "A2.")]]
    platypus = [{"instruction": "Add.", "input": "1 and 2", "output": "3", "data_source": "x"}]
    records, _ = source(tmp_path / "p.parquet", "platypus", platypus)
    assert roles(records[0]) == [("user", "Add.\n\n1 and 2"), ("assistant", "3")]


def test_records_format_keeps_groups(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Who are you?"}],
             "completion": [{"role": "assistant", "content": "Juniper."}], "source": "identity",
             "group": "identity/name/0"}]
    records, _ = source(tmp_path / "r.jsonl", "records", rows)
    assert records[0].group == "identity/name/0" and records[0].source == "mine"


# --- each file kind, and renamed columns ---------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_file_kind_with_a_column_mapping(tmp_path, suffix):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}."} for i in range(5)]
    records, metrics = source(tmp_path / f"qa{suffix}", "alpaca", rows,
                              columns={"instruction": "question", "output": "answer"})
    assert [roles(r) for r in records] == [[("user", r["question"]), ("assistant", r["answer"])] for r in rows]
    assert metrics["rows_in_file"] == 5


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_conversations_in_a_table(tmp_path, suffix):
    """Parquet holds a list of turns as a nested column; CSV as a JSON string in a cell."""
    rows = [{"conversations": c["conversations"] if suffix == ".parquet" else json.dumps(c["conversations"])}
            for c in SUPPORT]
    records, _ = source(tmp_path / f"s{suffix}", "sharegpt", rows)
    assert len(records) == 2 and [t.role for t in records[0].prompt] == ["system", "user", "assistant", "user"]


def test_subsets_are_seeded_and_sized(tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(50)]
    a, metrics = source(tmp_path / "x.jsonl", "alpaca", rows, subset_rows=10, seed=3)
    b, _ = source(tmp_path / "x.jsonl", "alpaca", rows, subset_rows=10, seed=3)
    c, _ = source(tmp_path / "x.jsonl", "alpaca", rows, subset_rows=10, seed=4)
    f, _ = source(tmp_path / "x.jsonl", "alpaca", rows, subset_fraction=0.2)
    assert len(a) == 10 == metrics["rows_in"] and metrics["rows_in_file"] == 50
    assert a == b and a != c and len(f) == 10
    # the same rows whatever the file kind
    p, _ = source(tmp_path / "x.parquet", "alpaca", rows, subset_rows=10, seed=3)
    assert p == a


# --- rows that cannot become a record -----------------------------------------------------------

def _turn(role, content):
    return {"role": role, "content": content}


DROPPED = {  # reason -> a messages row dropped for it
    "wrong_type": {"messages": {"role": "user", "content": "Hi"}},
    "bad_json": {"messages": "not a list"},  # a conversation as text (a CSV cell) that is not JSON
    "unknown_role": {"messages": [_turn("user", "Hi"), _turn("tool", "{}"), _turn("assistant", "Hello")]},
    "no_user_turn": {"messages": [_turn("system", "Be kind."), _turn("assistant", "Hello")]},
    "no_assistant_reply": {"messages": [_turn("user", "Hi")]},
    "empty_reply": {"messages": [_turn("user", "Hi"), _turn("assistant", "  ")]},
    "empty_turn": {"messages": [_turn("user", "Hi"), _turn("assistant", "Hello"), _turn("user", ""),
                                _turn("assistant", "Yes?")]},
    "turn_order": {"messages": [_turn("user", "Hi"), _turn("user", "Hi again"), _turn("assistant", "Hello")]},
    "too_long": {"messages": [_turn("user", "x" * 80), _turn("assistant", "y" * 80)]},
    "nul_char": {"messages": [_turn("user", "Hi\x00"), _turn("assistant", "Hello")]},
    "invalid_unicode": {"messages": [_turn("user", "Hi \ud800"), _turn("assistant", "Hello")]},  # JSON "\\ud800"
}


def test_every_drop_reason_is_counted_and_rows_add_up(tmp_path):
    assert set(DROPPED) == set(DROP_REASONS)
    good = [{"messages": [_turn("user", f"Question {i}?"), _turn("assistant", f"Answer {i}.")]} for i in range(3)]
    cut = {"messages": [_turn("user", "Hi"), _turn("assistant", "Hello"), _turn("user", "Anyone there?")]}
    rows = good + list(DROPPED.values()) + [{**DROPPED["wrong_type"], "messages": [["user", "Hi"]]}, cut]
    records, metrics = source(tmp_path / "d.jsonl", "messages", rows, max_chars=100)
    assert metrics["dropped"] == {reason: 2 if reason == "wrong_type" else 1 for reason in DROP_REASONS}
    assert metrics["rows_in"] == len(rows) == metrics["rows_out"] + sum(metrics["dropped"].values())
    assert len(records) == metrics["rows_out"] == 4
    # an unanswered last question is cut, counted, and the answered part kept
    assert roles(records[-1]) == [("user", "Hi"), ("assistant", "Hello")] and metrics["unanswered_turns_cut"] == 1


def test_text_formats_drop_by_the_same_reasons(tmp_path):
    rows = [{"instruction": None, "output": "x"}, {"instruction": "q", "output": None},
            {"instruction": "q", "output": ""}, {"instruction": 7, "output": "x"}, {"instruction": "q", "output": "a"}]
    _, metrics = source(tmp_path / "t.jsonl", "alpaca", rows)
    assert {k: v for k, v in metrics["dropped"].items() if v} == {
        "no_user_turn": 1, "no_assistant_reply": 1, "empty_reply": 1, "wrong_type": 1}


def test_prompt_completion_cells_holding_json_conversations_are_parsed(tmp_path):
    """A CSV or parquet string cell holding a JSON list of role/content turns is a conversation, as
    in the other conversation formats; any other text, even one opening with ``[``, is plain text."""
    conversation = [_turn("system", "Be brief."), _turn("user", "Name a colour.")]
    rows = [{"prompt": json.dumps(conversation), "completion": json.dumps([_turn("assistant", "Green.")])},
            {"prompt": "[1, 2, 3] summed is", "completion": "6."},
            {"prompt": '[{"a": 1}]', "completion": "a: 1"},  # JSON, but no turns: text
            {"prompt": json.dumps([_turn("tool", "{}")]), "completion": "Done."}]
    for suffix in (".csv", ".parquet", ".jsonl"):
        records, metrics = source(tmp_path / f"p{suffix}", "prompt_completion", rows)
        assert [roles(r) for r in records] == [
            [("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Green.")],
            [("user", "[1, 2, 3] summed is"), ("assistant", "6.")],
            [("user", '[{"a": 1}]'), ("assistant", "a: 1")]], suffix
        assert metrics["dropped"]["unknown_role"] == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_a_nul_character_drops_its_row_in_every_file_kind(tmp_path, suffix):
    """NUL is almost always a binary or UTF-16 file read as text: its row goes, counted, whatever
    the file kind (parquet text and conversation columns included), and the file is read."""
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q\x002", "output": "a2"},
            {"instruction": "q3", "output": "a3\x00"}]
    records, metrics = source(tmp_path / f"n{suffix}", "alpaca", rows)
    assert [r.prompt[0].content for r in records] == ["q1"] and metrics["dropped"]["nul_char"] == 2
    rows = [{"messages": [_turn("user", "Hi\x00"), _turn("assistant", "Hello")]},
            {"messages": [_turn("user", "Hi"), _turn("assistant", "Hello")]}]
    records, metrics = source(tmp_path / f"m{suffix}", "messages",
                              [{"messages": json.dumps(r["messages"])} for r in rows] if suffix == ".csv" else rows)
    assert len(records) == 1 and metrics["dropped"]["nul_char"] == 1


def test_a_lone_surrogate_is_counted_as_invalid_unicode_in_records_too(tmp_path):
    rows = [{"prompt": [_turn("user", "Hi \ud800")], "completion": [_turn("assistant", "Hello")], "source": "s"},
            {"prompt": [_turn("user", "Hi")], "completion": [_turn("assistant", "Hello")], "source": "s"}]
    records, metrics = source(tmp_path / "r.jsonl", "records", rows)  # json.dumps writes "\\ud800"
    assert len(records) == 1 and metrics["dropped"]["invalid_unicode"] == 1


# --- CSV as spreadsheets write it, and lines too long to parse -----------------------------------

def test_csv_with_a_utf8_bom_keeps_its_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte order mark; a column read twice is an error
    (csv_column_twice above), one the format does not read is not."""
    path = _raw(tmp_path / "bom.csv", "\ufeffinstruction,output,notes,notes\r\nq,a,x,y\r\n".encode())
    records, _ = read_source(DatasetSpec(path=str(path), format="alpaca"), "mine")
    assert [roles(r) for r in records] == [[("user", "q"), ("assistant", "a")]]


def test_a_csv_cell_over_the_csv_modules_own_limit_is_read(tmp_path):
    """Python's csv refuses a cell over 131072 characters; here the row is kept or dropped by
    max_chars like any other, and the file read."""
    long = "x" * 200_000
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": long},
            {"instruction": "q3", "output": "a3"}]
    records, metrics = source(tmp_path / "big.csv", "alpaca", rows)
    assert [r.completion[0].content for r in records] == ["a1", "a3"] and metrics["dropped"]["too_long"] == 1
    assert metrics["rows_in"] == 3 == metrics["rows_out"] + sum(metrics["dropped"].values())
    records, _ = source(tmp_path / "big.csv", "alpaca", rows, max_chars=250_000)
    assert [r.completion[0].content for r in records] == ["a1", long, "a3"]


def test_a_csv_row_over_the_line_cap_is_dropped_unparsed_and_the_rows_after_it_read(tmp_path):
    """Past line_cap(max_chars) the row goes as too_long without its text in memory; the reader
    still finds where it ends, through quoted line ends, doubled quotes and commas."""
    cap = line_cap(100)
    cell = 'a line, with "quotes" and commas\r\n' * (cap // 30)
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": cell},
            {"instruction": "q3", "output": "two\r\nlines"}, {"instruction": "x" * (cap + 5), "output": "a4"},
            {"instruction": "q5", "output": "a5"}]
    records, metrics = source(tmp_path / "huge.csv", "alpaca", rows, max_chars=100)
    assert [roles(r) for r in records] == [[("user", "q1"), ("assistant", "a1")],
                                           [("user", "q3"), ("assistant", "two\r\nlines")],
                                           [("user", "q5"), ("assistant", "a5")]]
    assert metrics["dropped"]["too_long"] == 2 and metrics["rows_in"] == 5


def test_a_huge_json_line_is_dropped_unparsed_in_bounded_memory(tmp_path):
    """A 40 MiB line (a 54 MB one peaked at 731 MB when parsed) is a too_long drop that never
    holds more than the cap; a line of exactly the cap is read, one byte more is not."""
    good = json.dumps({"messages": [_turn("user", "Hi"), _turn("assistant", "Hello")]})
    cap = line_cap(100)
    at_cap = good[:-1] + ', "pad": "' + "p" * (cap - len(good) - 12) + '"}'
    path = tmp_path / "h.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.write(f'{good}\n\n{at_cap}\n{at_cap[:-1]}, "more": 1}}\n{{"messages": "')
        for _ in range(40):
            f.write("x" * 2**20)
        f.write(f'"}}\n{good}\n')
    assert len(at_cap) + 1 == cap
    tracemalloc.start()
    try:
        records, metrics = read_source(DatasetSpec(path=str(path), format="messages", max_chars=100), "mine")
        records, metrics = list(records), metrics()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(records) == 3 and metrics["dropped"]["too_long"] == 2 and metrics["rows_in"] == 5
    assert peak < 12 * 2**20, peak


def test_the_line_index_costs_8_bytes_a_line_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text('{"messages": []}\n' * 200_000 + "\n  \n" + '{"messages": []}\n' + "not json\n")
    tracemalloc.start()
    try:
        rows = open_rows(path, FORMATS["messages"].fields, {}, line_cap(6000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows.count == 200_002 and peak / rows.count < 12  # a list of Python ints: 92 bytes a line
    with pytest.raises(PipelineError, match=r"many\.jsonl:200004: not valid JSON"):
        list(rows.read(np.array([0, 200_000, 200_001])))


# --- files that are not what their format says --------------------------------------------------

def _raw(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


BAD_FILES = {  # name -> (file name, content, format, the error after the path)
    "jsonl_not_json": ("b.jsonl", '{"messages": []}\n\nnot json\n', "messages", ":3: not valid JSON"),
    "jsonl_not_an_object": ("b.jsonl", '[1, 2]\n', "messages", ":1: a JSON list, not an object"),
    "jsonl_missing_field": ("b.jsonl", '{"messages": []}\n{"msgs": []}\n', "messages",
                            ": line 2: no 'messages' field (format messages needs it)"),
    "jsonl_bad_utf8": ("b.jsonl", b'{"messages": "\xff"}\n', "messages", ":1: invalid UTF-8"),
    "json_not_a_list": ("b.json", '{"messages": []}', "messages", ": a JSON dict, not a list of records"),
    "json_not_json": ("b.json", '[{"a": 1},\n oops]', "messages", ":2: not valid JSON"),
    "csv_missing_column": ("b.csv", "question,reply\nq,a\n", "alpaca", ": missing column(s) instruction, output"),
    "csv_ragged": ("b.csv", "instruction,output\nq,a\nq,a,extra\n", "alpaca", ":3: 3 fields, the header has 2"),
    "csv_column_twice": ("b.csv", "instruction,output,output\nq,a,b\n", "alpaca",
                         ": column 'output' appears 2 times in the header (rename all but one)"),
    "empty": ("b.jsonl", "", "messages", ": empty file (0 bytes)"),
    "unknown_suffix": ("b.txt", "hello", "messages", ": unknown file type '.txt'"),
    "missing": ("nothing.jsonl", None, "messages", ": file not found"),
    "bad_record": ("b.jsonl", '{"prompt": [], "completion": []}\n', "records", ": line 1: not a valid record"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_file_and_where(tmp_path, kind):
    name, content, fmt, expected = BAD_FILES[kind]
    path = tmp_path / name
    if content is not None:
        _raw(path, content)
    with pytest.raises(PipelineError) as exc:
        records, _ = read_source(DatasetSpec(path=str(path), format=fmt), "mine")
        list(records)
    assert str(exc.value).startswith(f"{path}{expected}"), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_parquet_conversation_column_of_the_wrong_type(tmp_path):
    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"messages": [1, 2]}), path)
    with pytest.raises(PipelineError, match=r"column 'messages' has type int64, expected a list of turns"):
        read_source(DatasetSpec(path=str(path), format="messages"), "mine")


def test_a_column_the_format_does_not_read_is_refused_before_the_file_is_opened(tmp_path):
    spec = DatasetSpec(path=str(tmp_path / "absent.csv"), format="alpaca", columns={"answer": "reply"})
    with pytest.raises(PipelineError) as exc:
        read_source(spec, "mine")
    assert str(exc.value) == ("params.yaml: datasets.mine.columns: answer is not a field of format alpaca "
                              "(its fields: instruction, input, output, system)")


# --- a user's file, one params entry, dvc exp run -----------------------------------------------

@pytest.mark.slow
def test_a_users_file_is_trained_on_with_one_params_entry(clone):
    from tests.modelkit import chatml_tokenizer, configure_tiny_dag, tiny_model_folder

    repo = configure_tiny_dag(clone, tiny_model_folder(clone.parent / "tiny-model", chatml_tokenizer()))
    write_rows(repo / "data/raw/support.jsonl", SUPPORT * 3 + [{"conversations": [{"from": "human", "value": "?"}]}])
    run_cli(["dvc", "add", "data/raw/support.jsonl"], repo, check=True)
    run_cli(["git", "add", "data/raw/support.jsonl.dvc", "data/raw/.gitignore"], repo, check=True)
    run_cli(["git", "commit", "-qm", "support chats"], repo, check=True)
    proc = run_cli(["dvc", "exp", "run", "train", "-S",
                    "+datasets.support={path: data/raw/support.jsonl, format: sharegpt}"], repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Running stage 'process_data'" in proc.stdout
    metrics = json.loads((repo / "data/metrics/process_data.json").read_text())["support"]
    assert metrics["rows_in"] == 7 and metrics["dropped"]["no_assistant_reply"] == 1
    trained = [r for r in read_jsonl(repo / "data/final/train.jsonl") if r.source == "support"]
    val = [r for r in read_jsonl(repo / "data/final/val.jsonl") if r.source == "support"]
    assert trained or val
    assert any(t.role == "assistant" for r in trained + val for t in r.prompt)  # multi-turn kept whole
    report = json.loads((repo / "data/final/report.json").read_text())
    assert report["dropped"]["process_data_support"]["no_assistant_reply"] == 1
    # the exact duplicates (each conversation three times) went at the split, counted
    assert report["dropped"]["data_split_support"]["duplicate"] == 4
    live = json.loads((repo / "dvclive/train/metrics.json").read_text())
    assert live["records"] == report["train"]["rows"]["total"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["datasets"]["support"]["format"] == "sharegpt"
    assert params_file(repo)["datasets"]["orca"] == repo_params()["datasets"]["orca"]


def test_the_params_schema_takes_the_formats_of_the_registry_and_an_unknown_one_fails_loudly(tmp_path):
    """FORMATS (src/formats.py) is the one list of formats: the schema takes each and no other, and
    a name outside it is a one-line error wherever it gets to, never read as some other format."""
    for fmt in FORMATS:
        assert DatasetSpec(path="x.jsonl", format=fmt).format == fmt
    with pytest.raises(ValidationError, match="format"):
        DatasetSpec(path="x.jsonl", format="csv")
    message = ("unknown data format 'csv' (one of records, alpaca, sharegpt, messages, prompt_completion, orca, "
               "platypus)")
    with pytest.raises(PipelineError) as exc:
        conversation_of("csv", {"prompt": "Hi?", "completion": "Hello."})
    assert str(exc.value) == message
    with pytest.raises(PipelineError) as exc:
        read_source(DatasetSpec.model_construct(path=str(tmp_path / "absent.jsonl"), format="csv"), "mine")
    assert str(exc.value) == message
