"""The shipped sample files hold the rows dev/make_samples.py writes, in the upstream schemas."""

from __future__ import annotations

import importlib.util

import pyarrow.parquet as pq

from tests.conftest import ROOT, repo_params


def _make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "dev" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_samples_hold_the_rows_the_script_writes(tmp_path):
    # rows and schema, not bytes: the bytes depend on the pyarrow/zstd build
    written = _make_samples().write_samples(tmp_path, seed=0)
    raw = {source: spec["path"] for source, spec in repo_params()["datasets"].items()}
    assert set(written) == {"orca", "platypus"}
    for source, path in written.items():
        ours, committed = pq.ParquetFile(path), pq.ParquetFile(ROOT / raw[source])
        hint = f"dev/make_samples.py no longer writes the rows of {raw[source]}"
        assert ours.schema_arrow == committed.schema_arrow, hint
        assert ours.metadata.num_row_groups == committed.metadata.num_row_groups, hint
        assert ours.read().to_pylist() == committed.read().to_pylist(), hint


def test_samples_have_upstream_schemas_and_the_rows_that_need_care():
    raw = {source: spec["path"] for source, spec in repo_params()["datasets"].items()}
    orca = pq.read_table(ROOT / raw["orca"])
    platypus = pq.read_table(ROOT / raw["platypus"])
    assert orca.schema.names == ["id", "system_prompt", "question", "response"]
    assert platypus.schema.names == ["instruction", "input", "output", "data_source"]
    assert {str(t) for t in orca.schema.types + platypus.schema.types} == {"string"}
    assert 200 <= orca.num_rows <= 500 and 200 <= platypus.num_rows <= 500
    assert pq.ParquetFile(ROOT / raw["orca"]).num_row_groups > 1

    o = orca.to_pylist()
    assert 0.1 < sum(r["system_prompt"] == "" for r in o) / len(o) < 0.5
    assert any(r["response"] == "" for r in o)
    assert any(len(r["question"]) + len(r["response"]) > 6000 for r in o)
    pairs = [(r["question"], r["response"]) for r in o]
    assert len(set(pairs)) < len(pairs)
    p = platypus.to_pylist()
    assert 0.5 < sum(r["input"] == "" for r in p) / len(p) < 1
    lengths = sorted(len(r["output"]) for r in p)
    assert lengths[len(lengths) // 2] < 500 < lengths[-1]
