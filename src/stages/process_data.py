"""Stage ``process_data@<source>``: one entry of ``datasets`` in params.yaml, as records.

Reads the file the entry names (``.jsonl``, ``.json``, ``.parquet`` or ``.csv``) in its
``format`` (alpaca, sharegpt, messages, prompt_completion, orca, platypus, or the pipeline's
own records), keeps a seeded subset (``subset_rows`` or ``subset_fraction``), and writes one
record per usable row to ``<paths.processed_dir>/<source>.jsonl``; multi-turn conversations
stay whole. Rows that cannot become a record are counted by reason in
``<paths.metrics_dir>/process_data_<source>.json`` (rows in = rows out + dropped).

Run: python -m src.stages.process_data --source orca   (or: dvc repro process_data@orca)
"""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.formats import read_source
from src.records import write_json, write_jsonl

log = logging.getLogger(__name__)


def main(cfg: Params, source: str) -> dict:
    if source not in cfg.datasets:
        raise PipelineError(f"--source: unknown source '{source}' (params datasets has: {', '.join(cfg.datasets)})")
    spec = cfg.datasets[source]
    records, accounting = read_source(spec, source)
    out = cfg.paths.processed_file(source)
    write_jsonl(out, tqdm(records, desc=spec.path, unit="row", mininterval=1))
    metrics = accounting()
    write_json(cfg.paths.metrics_file(f"process_data_{source}"), metrics)
    log.info("%s: wrote %d records (%d multi-turn, %d unanswered last turns cut); dropped %s", out,
             metrics["rows_out"], metrics["multi_turn_records"], metrics["unanswered_turns_cut"],
             {k: v for k, v in metrics["dropped"].items() if v} or "none")
    return metrics


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="a key of datasets in params.yaml")


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, _args))
