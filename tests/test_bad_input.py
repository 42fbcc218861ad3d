"""Bad input across the pipeline: each case ends in one line on stderr naming the file, row or
key, and exit code 1 (or in counted handling), never in a traceback or a silent drop.

Raw-file cases (parquet) are in test_raw.py, params cases in test_config.py, model sources
in test_fetch.py; this file covers record files, JSON too deeply nested to parse, model folders,
lengths and output folders.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src import cli
from src.config import DatasetSpec
from src.records import Record
from src.sources import process_source, read_source
from src.stages import merge_model, train
from tests.modelkit import prepared, tiny_params


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Data and a fetched tiny base model, shared read-only by the tests below."""
    tmp = tmp_path_factory.mktemp("bad")
    model, cfg = prepared(tmp)
    return tmp, model, cfg


def variant(built, tmp_path: Path, sft: dict | None = None, **sections):
    """The shared params with outputs under ``tmp_path`` and ``sections`` merged in."""
    tmp, model, cfg = built
    paths = {"adapter": str(tmp_path / "adapter"), "checkpoints": str(tmp_path / "checkpoints"),
             "train_live": str(tmp_path / "live"), "merged_model": str(tmp_path / "merged"),
             "base_model": cfg.paths.base_model, "train": cfg.paths.train, "val": cfg.paths.val,
             "report": cfg.paths.report, "metrics_dir": cfg.paths.metrics_dir,
             **sections.pop("paths", {})}
    train_section = {"sft": {**cfg.train.sft, **(sft or {})}, **sections.pop("train", {})}
    return tiny_params(tmp, model, paths=paths, train=train_section, **sections)


def one_line_error(main, cfg, monkeypatch, capsys) -> str:
    """Run a stage as its command line does; assert exit 1 and a single line; return it."""
    monkeypatch.setattr(cli, "load_params", lambda: cfg)
    assert cli.run(main, argv=[]) == 1
    err = capsys.readouterr().err  # progress bars share stderr, ending their lines with \r
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def records_file(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD = Record.model_validate({"prompt": [{"role": "user", "content": "Hi"}],
                              "completion": [{"role": "assistant", "content": "Hello"}],
                              "source": "orca"}).to_json()


@pytest.mark.parametrize("line, message", [
    ('{"prompt": [{"role": "user", "content": "Hi"}], "completion": [', "line 3: not a valid record (Invalid JSON"),
    ('{"prompt": [{"role": "robot", "content": "Hi"}], "completion": [{"role": "assistant", '
     '"content": "x"}], "source": "s"}', "line 3: not a valid record (prompt.0.role: Input should be 'system', "
                                        "'user' or 'assistant')"),
    ('{"prompt": [{"role": "user", "content": ""}], "completion": [{"role": "assistant", '
     '"content": "x"}], "source": "s"}', "line 3: not a valid record (prompt.0.content: String should have at "
                                         "least 1 character)"),
])
def test_bad_training_record_names_file_line_and_key(built, tmp_path, monkeypatch, capsys, line, message):
    bad = records_file(tmp_path / "train.jsonl", [GOOD, GOOD, line])
    cfg = variant(built, tmp_path, paths={"train": bad})
    error = one_line_error(train.main, cfg, monkeypatch, capsys)
    assert error.startswith(f"error: {bad}:3: ") and message.removeprefix("line 3: ") in error


DEEP = "[" * 5000 + "]" * 5000  # valid JSON that Python's parser gives up on (RecursionError)
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize("name, text, where", [
    ("deep.jsonl", json.dumps({"messages": CHAT}) + "\n\n" + '{"messages": ' + DEEP + "}\n", ":3: "),
    ("deep.json", '[{"messages": ' + DEEP + "}]", ": "),
])
def test_json_nested_too_deeply_is_one_line_naming_the_file_and_line(tmp_path, capsys, name, text, where):
    """Read as process_data reads a source, through the entry points' error handling."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    spec = DatasetSpec(path=str(path), format="messages")
    assert cli.one_line_errors(lambda: list(read_source(spec, "mine")[0])) == 1
    err = capsys.readouterr().err
    assert err == f"error: {path}{where}JSON nested too deeply to read (arrays or objects about 1000 levels " \
                  "within each other)\n"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_cell_nested_too_deeply_is_a_counted_drop(tmp_path, capsys, suffix):
    """A conversation cell (CSV, or a parquet string column) is parsed row by row: one that cannot
    be is dropped and counted as bad_json, and the rest of the file is read."""
    path = tmp_path / f"deep{suffix}"
    cells = [json.dumps(CHAT), DEEP, "not JSON", json.dumps(CHAT)]
    if suffix == ".csv":
        path.write_text("messages\n" + "".join(f'"{c.replace(chr(34), 2 * chr(34))}"\n' for c in cells))
    else:
        pq.write_table(pa.table({"messages": cells}), path)
    records, metrics = read_source(DatasetSpec(path=str(path), format="messages"), "mine")
    read = []
    assert cli.one_line_errors(lambda: read.extend(records)) == 0
    assert capsys.readouterr().err == "" and len(read) == 2
    metrics = metrics()
    assert {k: v for k, v in metrics["dropped"].items() if v} == {"bad_json": 2}
    assert metrics["rows_in"] == 4 == metrics["rows_out"] + sum(metrics["dropped"].values())


def test_empty_training_set(built, tmp_path, monkeypatch, capsys):
    empty = records_file(tmp_path / "train.jsonl", [])
    cfg = variant(built, tmp_path, paths={"train": empty})
    assert one_line_error(train.main, cfg, monkeypatch, capsys) == f"error: {empty}: no records to train on"


@pytest.mark.parametrize("remove, message", [
    ("model.safetensors", "no model weights (*.safetensors); run dvc repro fetch_base_model"),
    ("tokenizer.json", "no tokenizer (tokenizer.json or tokenizer.model)"),
])
def test_base_model_folder_missing_a_part(built, tmp_path, monkeypatch, capsys, remove, message):
    _, _, cfg = built
    base = shutil.copytree(cfg.paths.base_model, tmp_path / "base")
    (base / remove).unlink()
    bad = variant(built, tmp_path, paths={"base_model": str(base)})
    assert one_line_error(train.main, bad, monkeypatch, capsys) == f"error: {base}: {message}"


def test_over_length_records_dropped_and_counted(built, tmp_path):
    cfg = variant(built, tmp_path, sft={"max_steps": 2, "max_length": 96}, train={"over_length": "drop"})
    trainer = train.main(cfg)
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    dropped = metrics["records_dropped"]
    assert dropped["too_long"] > 0 and metrics["records_truncated"] == 0
    assert metrics["records"] == metrics["records_trained"] + metrics["records_distilled"] + sum(dropped.values())
    assert metrics["records_trained"] == train.sequences_in(trainer.train_dataset)  # packed rows hold several
    longest = max(len(ids) for ids in trainer.train_dataset["input_ids"])
    assert longest <= 96


def test_every_record_over_length_is_an_error(built, tmp_path, monkeypatch, capsys):
    _, _, shared = built
    cfg = variant(built, tmp_path, sft={"max_length": 8}, train={"over_length": "drop"})
    error = one_line_error(train.main, cfg, monkeypatch, capsys)
    assert error.startswith(f"error: {shared.paths.train}: all ") and "longer than train.sft.max_length 8" in error
    # truncating instead leaves no record an answer token within 8 tokens: also an error, not a silent drop
    cfg = variant(built, tmp_path, sft={"max_length": 8}, train={"over_length": "truncate"})
    error = one_line_error(train.main, cfg, monkeypatch, capsys)
    assert error == f"error: {shared.paths.train}: no record keeps a completion token within max_length 8"


def test_unwritable_output_folder(built, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = variant(built, tmp_path, paths={"processed_dir": str(blocker)})
    error = one_line_error(lambda c: process_source(c, "orca"), cfg, monkeypatch, capsys)
    assert error == f"error: {blocker / 'orca.jsonl'}: cannot write (File exists: {blocker})"
    cfg = variant(built, tmp_path, paths={"checkpoints": str(blocker / "checkpoints")})
    error = one_line_error(train.main, cfg, monkeypatch, capsys)
    assert error.startswith(f"error: {blocker / 'checkpoints'}") and "TRAIN_CHECKPOINT_DIR" in error


def test_disk_full_while_writing_records(built, tmp_path, monkeypatch, capsys):
    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Record, "to_json", full)
    cfg = variant(built, tmp_path, paths={"processed_dir": str(tmp_path)})
    error = one_line_error(lambda c: process_source(c, "orca"), cfg, monkeypatch, capsys)
    assert error == f"error: {tmp_path / 'orca.jsonl'}: cannot write (No space left on device)"
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_disk_full_while_writing_a_model_folder(built, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel

    cfg = variant(built, tmp_path, sft={"max_steps": 1, "save_steps": 10})
    train.main(cfg)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    error = one_line_error(merge_model.main, cfg, monkeypatch, capsys)
    assert error == f"error: {tmp_path / 'merged'}: cannot write (No space left on device)"
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.partial").exists()


def test_merge_goes_where_the_model_fits_or_stops_before_loading(built, tmp_path, monkeypatch, capsys):
    """merge_model loads the base unquantized: on the GPU when it fits there, else in CPU memory;
    when neither holds it (a 13B model on a 24 GB GPU and 16 GB of RAM), one line before loading."""
    import torch
    from safetensors.torch import load_file

    from src import modeling

    cfg = variant(built, tmp_path, sft={"max_steps": 1, "save_steps": 10})
    train.main(cfg)
    need = modeling.weights_bytes(cfg.paths.base_model, torch.float32)
    floats = sum(t.numel() for t in load_file(Path(cfg.paths.base_model) / "model.safetensors").values())
    assert need == 4 * floats  # counted from the headers, in the load dtype
    monkeypatch.setattr(modeling, "available_memory", lambda: (int(need * 1.3), 10 * need))
    assert modeling.merge_device(cfg.paths.base_model, torch.float32) == "cuda"
    monkeypatch.setattr(modeling, "available_memory", lambda: (int(need * 1.1), 10 * need))
    assert modeling.merge_device(cfg.paths.base_model, torch.float32) == "cpu"  # 20% headroom
    monkeypatch.setattr(modeling, "available_memory", lambda: (0, need))
    loads = []
    monkeypatch.setattr(merge_model, "load_model", lambda *a, **k: loads.append(a))
    error = one_line_error(merge_model.main, cfg, monkeypatch, capsys)
    assert error.startswith(f"error: {cfg.paths.base_model}: merging needs about ")
    assert "use a machine with more" in error
    assert loads == [] and not Path(cfg.paths.merged_model).exists()
