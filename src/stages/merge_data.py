"""Stage ``merge_data``: the final train and validation sets, and a dataset report.

Concatenates the per-source splits in sorted source order into ``paths.train`` and
``paths.val`` (dropping the split-only ``group`` field), drops any validation record
whose prompt occurs in the training set of another source, and writes ``paths.report``:
rows per source and split, character-length percentiles, rows dropped by reason at
every data stage, and the train/validation prompt overlap, which is 0 by construction.

Run: python -m src.stages.merge_data                 (or: dvc repro merge_data)
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
from tqdm import tqdm

from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.records import Record, prompt_key, read_json, read_jsonl, write_json, write_jsonl
from src.stages.data_split import drop_val_overlap

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
SOURCE_STAGES = ("generate_identity_data", "process_orca_data", "process_platypus_data")
PERCENTILES = (50, 90, 99, 100)


def length_stats(lengths: list[int]) -> dict[str, int]:
    """Percentiles of a list of lengths, as ``{"p50": ..., "p90": ..., "p99": ..., "max": ...}``."""
    if not lengths:
        return {f"p{q}" if q < 100 else "max": 0 for q in PERCENTILES}
    values = np.percentile(lengths, PERCENTILES, method="nearest")
    return {f"p{q}" if q < 100 else "max": int(v) for q, v in zip(PERCENTILES, values)}


def chars(turns) -> int:
    return sum(len(t.content) for t in turns)


def prompt_overlap(train: list[Record], val: list[Record]) -> int:
    """How many distinct normalised prompts occur in both sets."""
    return len({prompt_key(r) for r in train} & {prompt_key(r) for r in val})


def split_report(records: list[Record]) -> dict:
    return {
        "rows": dict(sorted(Counter(r.source for r in records).items())) | {"total": len(records)},
        "prompt_chars": length_stats([chars(r.prompt) for r in records]),
        "completion_chars": length_stats([chars(r.completion) for r in records]),
    }


def main(cfg: Params) -> dict:
    sources = sorted(cfg.paths.processed.model_dump())
    merged: dict[str, list[Record]] = {split: [] for split in SPLITS}
    rows_in = 0
    for split in SPLITS:
        for source in sources:
            path = cfg.paths.split_file(source, split)
            records = tqdm(read_jsonl(path), desc=str(path), unit="record", mininterval=1)
            before = len(merged[split])
            merged[split] += [r.model_copy(update={"group": None}) for r in records]
            rows_in += len(merged[split]) - before
    merged["val"], cross_source = drop_val_overlap(merged["train"], merged["val"])
    overlap = prompt_overlap(merged["train"], merged["val"])
    if overlap:
        raise PipelineError(f"{cfg.paths.val}: {overlap} prompts also occur in {cfg.paths.train}")
    write_jsonl(cfg.paths.train, merged["train"])
    write_jsonl(cfg.paths.val, merged["val"])

    dropped = {stage: read_json(cfg.paths.metrics_file(stage))["dropped"] for stage in SOURCE_STAGES}
    dropped |= {f"data_split_{s}": read_json(cfg.paths.metrics_file(f"data_split_{s}"))["dropped"]
                for s in sources}
    dropped["merge_data"] = {"prompt_in_train": cross_source}
    report = {split: split_report(merged[split]) for split in SPLITS}
    report |= {"dropped": dropped, "train_val_prompt_overlap": overlap}
    write_json(cfg.paths.report, report)
    rows_out = len(merged["train"]) + len(merged["val"])
    write_json(cfg.paths.metrics_file("merge_data"), {
        "rows_in": rows_in, "rows_out": rows_out, "train": len(merged["train"]), "val": len(merged["val"]),
        "dropped": {"prompt_in_train": cross_source}})
    log.info("wrote %d train and %d val records (sources: %s); train/val prompt overlap %d",
             len(merged["train"]), len(merged["val"]), ", ".join(sources), overlap)
    return report


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
