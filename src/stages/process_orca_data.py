"""Stage ``process_orca_data``: a seeded subset of Open-Orca, as records.

Reads the ``system_prompt``, ``question`` and ``response`` columns of the file named by
``paths.raw.orca`` (the upstream ``1M-GPT4-Augmented.parquet`` schema), keeps a seeded
subset (``process_orca_data.subset_rows`` or ``subset_fraction``), drops null, empty and
over-long rows (counted by reason in ``<paths.metrics_dir>/process_orca_data.json``) and
writes ``paths.processed.orca``.

Run: python -m src.stages.process_orca_data          (or: dvc repro process_orca_data)
"""

from __future__ import annotations

from src.cli import run
from src.config import Params
from src.process import drop_reason, process_raw
from src.records import Record, make_record

SOURCE = "orca"
COLUMNS = ("system_prompt", "question", "response")


def to_record(row: dict, max_chars: int) -> Record | str:
    """One Orca row as a record (system turn only when the system prompt is non-empty), or a drop reason."""
    system, question, response = row["system_prompt"], row["question"], row["response"]
    reason = drop_reason([question, response], [system], max_chars)
    if reason:
        return reason
    return make_record(question.strip(), response.strip(), SOURCE, system=(system or "").strip())


def main(cfg: Params) -> dict:
    return process_raw(cfg.paths.raw.orca, COLUMNS, cfg.process_orca_data, to_record,
                       cfg.paths.processed.orca, cfg.paths.metrics_file("process_orca_data"))


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
