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

import logging
from pathlib import Path

from tqdm import tqdm

from src.cli import run
from src.config import INPUT_DIRS, Params
from src.files import output_folder, write_json
from src.formats import read_source
from src.records import write_jsonl

log = logging.getLogger(__name__)


def process_source(cfg: Params, source: str, folder: Path | None = None) -> dict:
    """Read one source into ``<processed_dir>/<source>.jsonl`` (or the same name in ``folder``);
    return its row accounting."""
    spec = cfg.datasets[source]
    _warn_if_untracked(source, spec.path, cfg.paths.identity)
    records, accounting = read_source(spec, source)
    out = cfg.paths.processed_file(source, folder)
    write_jsonl(out, tqdm(records, desc=spec.path, unit="row", mininterval=1))
    metrics = accounting()
    log.info("%s: wrote %d records (%d multi-turn, %d unanswered last turns cut); dropped %s", out,
             metrics["rows_out"], metrics["multi_turn_records"], metrics["unanswered_turns_cut"],
             {k: v for k, v in metrics["dropped"].items() if v} or "none")
    return metrics


def _warn_if_untracked(source: str, path: str, identity: str) -> None:
    """DVC reruns this stage when a file under INPUT_DIRS or the identity records change (its deps
    in dvc.yaml); a file elsewhere is read, but a change to it alone reruns nothing."""
    file = Path(path).resolve()
    if file != Path(identity).resolve() and not any(file.is_relative_to(Path(d).resolve()) for d in INPUT_DIRS):
        log.warning("datasets.%s.path: %s is outside %s: DVC will not rerun process_data when only that file "
                    "changes; put it under %s (docs/data.md)", source, path, ", ".join(INPUT_DIRS), INPUT_DIRS[0])


def main(cfg: Params) -> dict:
    with output_folder(cfg.paths.processed_dir) as folder:  # all sources or none: a kill leaves no folder
        metrics = {source: process_source(cfg, source, folder) for source in sorted(cfg.datasets)}
    write_json(cfg.paths.metrics_file("process_data"), metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
