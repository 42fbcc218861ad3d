"""Stage ``process_data``: every entry of ``datasets`` in params.yaml, as records.

For each source (in name order), reads the file its entry names (``.jsonl``, ``.json``,
``.parquet`` or ``.csv``) in its ``format`` (alpaca, sharegpt, messages, prompt_completion,
orca, platypus, or the pipeline's own records), keeps a seeded subset (``subset_rows`` or
``subset_fraction``), and writes one record per usable row to
``<paths.processed_dir>/<source>.jsonl``; multi-turn conversations stay whole. Rows that cannot
become a record are counted by reason, per source, in ``<paths.metrics_dir>/process_data.json``
(for each source: rows in = rows out + dropped).

One stage for all sources, not one per source: a source's name would otherwise reach DVC's
command line and output paths before any check (docs/failures.md). The names are checked by
the params schema here, before anything is written.

Run: python -m src.stages.process_data   (or: dvc repro process_data)
"""

from __future__ import annotations

from src.cli import run
from src.config import Params
from src.files import output_folder, write_json
from src.sources import process_source


def main(cfg: Params) -> dict:
    with output_folder(cfg.paths.processed_dir) as folder:  # all sources or none: a kill leaves no folder
        metrics = {source: process_source(cfg, source, folder) for source in sorted(cfg.datasets)}
    write_json(cfg.paths.metrics_file("process_data"), metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
