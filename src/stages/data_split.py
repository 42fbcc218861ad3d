"""Stage ``data_split``: a leak-free, stable train/validation split of each source.

A record goes to validation when a seeded hash of its normalised prompt falls under
``data_split.val_fraction``, so one prompt never lands on both sides and adding rows
never moves an existing row. Records with a ``group`` (the question templates of the
identity data, ``identity/<intent>/<n>``) split by group instead: of each intent's
templates, ``val_fraction`` of them (at least one, never all) with the smallest seeded
hashes go to validation whole, so validation asks every kind of question in wordings
training never saw. Exact duplicate records are dropped; so is a validation record
whose prompt also occurs in training (two groups that produced the same question).
Each source's split goes to ``<paths.split_dir>/<source>/{train,val}.jsonl``, its counts to
``<paths.metrics_dir>/data_split.json`` under the source's name.

Run: python -m src.stages.data_split   (or: dvc repro data_split)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from src.cli import run
from src.config import Params
from src.dedup import digest, drop_val_overlap
from src.files import output_folder, write_json
from src.records import Record, prompt_key, read_jsonl, stable_hash, write_jsonl

log = logging.getLogger(__name__)


def held_out_groups(groups: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The groups that go to validation whole: per stratum (a group id up to its last ``/``),
    ``val_fraction`` of its groups rounded, at least one and never all, by smallest seeded hash."""
    strata: dict[str, set[str]] = defaultdict(set)
    for group in groups:
        strata[group.rpartition("/")[0]].add(group)
    held = set()
    for members in strata.values():
        k = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        held.update(sorted(members, key=lambda g: stable_hash(g, seed))[:k])
    return held


def drop_duplicates(records: list[Record]) -> tuple[list[Record], int]:
    """Keep the first of each exactly repeated (prompt, completion); return (kept, dropped count)."""
    seen, kept = set(), []
    for r in records:
        identity = digest(r.model_dump_json(include={"prompt", "completion"}))
        if identity not in seen:
            seen.add(identity)
            kept.append(r)
    return kept, len(records) - len(kept)


def split_records(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Assign each record to (train, val): grouped records by ``held_out_groups``, the others by a
    seeded hash of their normalised prompt. Order is kept."""
    held = held_out_groups({r.group for r in records if r.group is not None}, val_fraction, seed)
    train, val = [], []
    for r in records:
        in_val = r.group in held if r.group is not None else stable_hash(prompt_key(r), seed) < val_fraction
        (val if in_val else train).append(r)
    return train, val


def split_source(cfg: Params, source: str, folder: Path | None = None) -> dict:
    """Split ``<processed_dir>/<source>.jsonl`` into its train and val files (in split_dir, or in
    ``folder``); return the counts."""
    p = cfg.data_split
    path = cfg.paths.processed_file(source)
    records = list(tqdm(read_jsonl(path), desc=str(path), unit="record", mininterval=1))
    unique, duplicates = drop_duplicates(records)
    train, val = split_records(unique, p.val_fraction, p.seed)
    val, overlap = drop_val_overlap(train, val)
    write_jsonl(cfg.paths.split_file(source, "train", folder), train)
    write_jsonl(cfg.paths.split_file(source, "val", folder), val)
    metrics = {"rows_in": len(records), "rows_out": len(train) + len(val), "train": len(train), "val": len(val),
               "dropped": {"duplicate": duplicates, "prompt_in_train": overlap}}
    log.info("%s: %d train, %d val; dropped %d duplicates, %d val prompts seen in train",
             source, len(train), len(val), duplicates, overlap)
    return metrics


def main(cfg: Params) -> dict:
    with output_folder(cfg.paths.split_dir) as folder:  # all sources or none: a kill leaves no folder
        metrics = {source: split_source(cfg, source, folder) for source in sorted(cfg.datasets)}
    write_json(cfg.paths.metrics_file("data_split"), metrics)
    return metrics


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
