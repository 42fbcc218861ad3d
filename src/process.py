"""Turning a raw parquet file into records: the shared shell of the ``process_*_data`` stages.

Each stage supplies the columns it needs and a pure ``to_record(row, max_chars)`` that
returns a Record or the reason the row is dropped; rows in = rows out + rows dropped.
Records stream to the output file, so memory stays bounded by one read batch.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from src.config import SubsetParams
from src.raw import iter_rows, open_parquet, subset_indices
from src.records import Record, write_json, write_jsonl

log = logging.getLogger(__name__)

DROP_REASONS = ("null", "empty", "too_long")


def drop_reason(required: Sequence[str | None], optional: Sequence[str | None], max_chars: int) -> str | None:
    """Why a row is unusable (a required field null or blank, or all text over ``max_chars``), or None."""
    if any(v is None for v in required):
        return "null"
    if any(not v.strip() for v in required):
        return "empty"
    if sum(len(v.strip()) for v in (*required, *optional) if v) > max_chars:
        return "too_long"
    return None


def process_raw(raw_path: str | os.PathLike, columns: Sequence[str], subset: SubsetParams,
                to_record: Callable[[dict, int], Record | str],
                out_path: str | os.PathLike, metrics_path: str | os.PathLike) -> dict:
    """Read a seeded subset of ``raw_path``, convert it, write records and row accounting."""
    pf = open_parquet(raw_path, columns)
    num_rows = pf.metadata.num_rows
    indices = subset_indices(num_rows, subset.subset_rows, subset.subset_fraction, subset.seed)
    log.info("%s: %d rows in %d row groups; reading %d of them (columns %s)",
             raw_path, num_rows, pf.num_row_groups, len(indices), ", ".join(columns))
    dropped = Counter(dict.fromkeys(DROP_REASONS, 0))

    def kept() -> Iterator[Record]:
        rows = iter_rows(raw_path, pf, columns, indices)
        for row in tqdm(rows, total=len(indices), unit="row", desc=str(raw_path), mininterval=1):
            result = to_record(row, subset.max_chars)
            if isinstance(result, str):
                dropped[result] += 1
            else:
                yield result

    rows_out = write_jsonl(out_path, kept())
    metrics = {"rows_in_file": num_rows, "rows_in": len(indices), "rows_out": rows_out,
               "dropped": dict(dropped)}
    write_json(metrics_path, metrics)
    log.info("%s: wrote %d records; dropped %s", out_path, rows_out, dict(dropped))
    return metrics
