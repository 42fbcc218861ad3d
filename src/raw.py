"""Reading raw parquet files with bounded memory and one-line errors.

Only the needed columns are read, in batches, and only from the row groups that
hold a selected row. Every problem (missing file, missing column, wrong type,
corrupt file, invalid UTF-8) raises PipelineError naming the file and, where
there is one, the row and column. Text with a NUL character is read as it is:
src/formats.py drops its row, counted, as it does for every file kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from src.errors import PipelineError

_TEXT_TYPES = (pa.string(), pa.large_string(), pa.string_view())
READ_BUFFER = 8 * 2**20


def _texty(col_type: pa.DataType) -> bool:
    """Text, dictionary-encoded text, or a column with only nulls (an empty optional field)."""
    if pa.types.is_dictionary(col_type):
        return col_type.value_type in _TEXT_TYPES
    return col_type in _TEXT_TYPES or pa.types.is_null(col_type)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def open_parquet(path: str | os.PathLike, columns: Sequence[str],
                 text_columns: Sequence[str] | None = None) -> pq.ParquetFile:
    """Open a parquet file and check that it has rows, every column in ``columns``, and the
    ``text_columns`` (all of ``columns`` when not given) as text."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{path}: a folder, not a parquet file")
    if not path.is_file():
        raise PipelineError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty file (0 bytes)")
    try:
        # Read through an 8 MiB buffer, never a whole column chunk at once: a file written as
        # one row group (a million rows of a 1 GB file) stays within bounded memory.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
    except (pa.ArrowException, OSError) as err:
        raise PipelineError(f"{path}: not a readable parquet file ({_first_line(err)})") from err
    schema = pf.schema_arrow
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(found: {', '.join(schema.names)})")
    for name in columns if text_columns is None else text_columns:
        col_type = schema.field(name).type
        if not _texty(col_type):
            raise PipelineError(f"{path}: column '{name}' has type {col_type}, expected string")
    if pf.metadata.num_rows == 0:
        raise PipelineError(f"{path}: no rows")
    return pf


def subset_indices(num_rows: int, rows: int | None, fraction: float | None, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded subset: ``rows`` of them, a ``fraction``, or all."""
    if rows is None and fraction is None:
        return np.arange(num_rows)
    size = min(rows, num_rows) if rows is not None else round(fraction * num_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=size, replace=False))


def _check_text(path: Path, name: str, column: pa.ChunkedArray, row_ids: np.ndarray) -> None:
    """Refuse invalid UTF-8, naming the file, row and column."""
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        for i, value in enumerate(column.cast(pa.binary()).to_pylist()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PipelineError(f"{path}: row {row_ids[i]}, column '{name}': invalid UTF-8 "
                                    f"({err.reason})") from err
        raise


def iter_rows(path: str | os.PathLike, pf: pq.ParquetFile, columns: Sequence[str],
              indices: np.ndarray, batch_size: int = 8192,
              text_columns: Sequence[str] | None = None) -> Iterator[dict]:
    """Yield the selected rows (sorted ``indices``) of ``pf`` (opened from ``path``) as dicts;
    the ``text_columns`` (default: all) are checked for invalid UTF-8.

    Row groups that hold no selected row are skipped; the others are read in batches of
    ``batch_size`` rows, so memory stays bounded however large the file or its row groups.
    """
    path = Path(path)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    for group in range(pf.num_row_groups):
        lo, hi = np.searchsorted(indices, starts[group : group + 2])
        if lo == hi:
            continue
        offset = starts[group]
        try:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=list(columns)):
                end = offset + batch.num_rows
                wanted = indices[lo : lo + np.searchsorted(indices[lo:hi], end)]
                lo += len(wanted)
                if len(wanted):
                    table = pa.Table.from_batches([batch]).take(wanted - offset)
                    for name in columns if text_columns is None else text_columns:
                        column = table.column(name)
                        if pa.types.is_dictionary(column.type):
                            column = column.cast(column.type.value_type)
                            table = table.set_column(table.schema.get_field_index(name), name, column)
                        if not pa.types.is_null(column.type):
                            _check_text(path, name, column, wanted)
                    yield from table.to_pylist()
                offset = end
        except (pa.ArrowException, OSError) as err:
            raise PipelineError(f"{path}: row group {group} cannot be read ({_first_line(err)})") from err
