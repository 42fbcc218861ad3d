"""The shipped sample files are what src/sample_data.py writes, in the upstream schemas."""

from __future__ import annotations

import pyarrow.parquet as pq

from src import sample_data
from tests.conftest import ROOT, repo_params


def test_committed_samples_are_reproduced_byte_for_byte(tmp_path):
    written = sample_data.write_samples(tmp_path, seed=0)
    raw = {source: spec["path"] for source, spec in repo_params()["datasets"].items()}
    for source, path in written.items():
        assert path.read_bytes() == (ROOT / raw[source]).read_bytes(), f"rerun python -m src.sample_data ({source})"


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
