"""Stage ``process_platypus_data``: a seeded subset of Open-Platypus, as records.

Reads ``instruction``, ``input`` and ``output`` from the file named by ``paths.raw.platypus``
(the upstream Open-Platypus schema); a non-empty ``input`` is appended to the instruction
after a blank line. Keeps a seeded subset, drops null, empty and over-long rows (counted
in ``<paths.metrics_dir>/process_platypus_data.json``) and writes ``paths.processed.platypus``.

Run: python -m src.stages.process_platypus_data      (or: dvc repro process_platypus_data)
"""

from __future__ import annotations

from src.cli import run
from src.config import Params
from src.process import drop_reason, process_raw
from src.records import Record, make_record

SOURCE = "platypus"
COLUMNS = ("instruction", "input", "output")


def to_record(row: dict, max_chars: int) -> Record | str:
    """One Platypus row as a record (no system turn), or a drop reason."""
    instruction, extra, output = row["instruction"], row["input"], row["output"]
    reason = drop_reason([instruction, output], [extra], max_chars)
    if reason:
        return reason
    user = instruction.strip()
    if extra and extra.strip():
        user = f"{user}\n\n{extra.strip()}"
    return make_record(user, output.strip(), SOURCE)


def main(cfg: Params) -> dict:
    return process_raw(cfg.paths.raw.platypus, COLUMNS, cfg.process_platypus_data, to_record,
                       cfg.paths.processed.platypus, cfg.paths.metrics_file("process_platypus_data"))


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
