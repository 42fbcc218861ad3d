"""Stage ``merge_data``: the final train and validation sets, and a dataset report.

Concatenates the per-source splits in sorted source order into ``paths.train`` and
``paths.val`` (dropping the split-only ``group`` field), with the base model's own answers
(``paths.replay``, training only) as one more source. The training mix is set by
``merge_data.mix``: a source gives ``rows`` records (a seeded sample when it has more, all of
them repeated when it has fewer) or a ``share`` of the training set; a source not named gives
all it has. Validation is never mixed. Any validation record whose prompt occurs in the
training set of another source is dropped.

Before the mix, near-duplicate training records are removed across all sources (MinHash LSH,
``merge_data.near_duplicates``; the first in sorted source order is kept), and so is every
validation record near one in training. Training prompts are checked for word n-gram overlap
with what the pipeline evaluates on (validation prompts, ``evaluate``'s identity questions and
retention probes, ``sanity_check.prompts``): reported, and removed when
``merge_data.contamination.action`` is ``drop``. Writes ``paths.report``: rows per source and
split, how the mix kept, repeated and left out each source's rows, character-length
percentiles, rows dropped by reason at every data stage, near duplicates and contamination per
source, and the train/validation prompt overlap, which is 0 by construction. The earlier stages'
drops come from the row accounting each writes to ``paths.metrics_dir`` (every output
``${paths.metrics_dir}/<name>.json`` in dvc.yaml; one per source when its entries are sources).

Run: python -m src.stages.merge_data                 (or: dvc repro merge_data)
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter

import numpy as np
from tqdm import tqdm

from src.cli import run
from src.config import PIPELINE_FILE, REPLAY_SOURCE, MixSpec, NearDuplicateParams, Params, read_pipeline
from src.dedup import NearDuplicates, NgramIndex, drop_val_overlap, prompt_text
from src.errors import PipelineError
from src.files import read_json, read_yaml, write_json
from src.records import Record, prompt_key, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
PERCENTILES = (50, 90, 99, 100)
ACCOUNTING_OUT = re.compile(r"\$\{paths\.metrics_dir\}/([\w-]+)\.json")  # an out of dvc.yaml: a row accounting


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


def mix_targets(available: dict[str, int], mix: dict[str, MixSpec]) -> dict[str, int]:
    """Training rows wanted per source: ``rows``, all, or a ``share`` of the whole set (the shares
    fill what the other sources leave: total = their rows / (1 - sum of shares))."""
    spec = {s: mix.get(s, MixSpec()) for s in available}
    fixed = {s: (m.rows if m.rows is not None else available[s]) for s, m in spec.items() if m.share is None}
    shares = {s: m.share for s, m in spec.items() if m.share is not None}
    total = sum(fixed.values()) / (1 - sum(shares.values())) if shares else 0
    return fixed | {s: round(share * total) for s, share in shares.items()}


def take(records: list[Record], wanted: int, rng: random.Random) -> tuple[list[Record], dict[str, int]]:
    """``wanted`` records: a seeded sample (in file order) of fewer than there are, or every record
    as often as fits and a seeded sample of the rest; with the counts kept, repeated, left out."""
    n = len(records)
    if n == 0:
        return [], {"available": 0, "wanted": wanted, "kept": 0, "repeated": 0, "left_out": 0}
    copies, rest = divmod(wanted, n)
    picked = sorted(rng.sample(range(n), rest))
    out = records * copies + [records[i] for i in picked]
    kept = n if copies else rest
    return out, {"available": n, "wanted": wanted, "kept": kept, "repeated": len(out) - kept, "left_out": n - kept}


def apply_mix(train: dict[str, list[Record]], mix: dict[str, MixSpec], seed: int
              ) -> tuple[list[Record], dict[str, dict[str, int]]]:
    """The training set mixed as params ask (sources in sorted order), and the counts per source."""
    targets = mix_targets({s: len(r) for s, r in train.items()}, mix)
    out, counts = [], {}
    for source in sorted(train):
        records, counts[source] = take(train[source], targets[source], random.Random(f"{seed}/{source}"))
        out += records
    return out, counts


def split_report(records: list[Record]) -> dict:
    return {
        "rows": dict(sorted(Counter(r.source for r in records).items())) | {"total": len(records)},
        "prompt_chars": length_stats([chars(r.prompt) for r in records]),
        "completion_chars": length_stats([chars(r.completion) for r in records]),
    }


def read_source(path) -> list[Record]:
    records = tqdm(read_jsonl(path), desc=str(path), unit="record", mininterval=1)
    return [r.model_copy(update={"group": None}) for r in records]


def drop_near_duplicates(train: dict[str, list[Record]], val: list[Record], p: NearDuplicateParams
                         ) -> tuple[dict[str, list[Record]], list[Record], dict[str, int], dict[str, int]]:
    """Training records near an earlier one (sources in sorted order) and validation records near
    a training one are dropped; ``p.skip_sources`` are neither checked nor matched. Returns the
    kept train and val, and the counts dropped per source from each."""
    dropped_train = dict.fromkeys(sorted(train), 0)
    dropped_val = dict.fromkeys(sorted({r.source for r in val}), 0)
    if p.threshold is None:
        return train, val, dropped_train, dropped_val
    index = NearDuplicates(p.threshold, p.shingle_words, p.num_perm)
    kept = {}
    for source in sorted(train):
        if source in p.skip_sources:
            kept[source] = train[source]
            continue
        kept[source] = []
        for r in tqdm(train[source], desc=f"near duplicates: {source}", unit="record", mininterval=1):
            if index.add_unless_seen(r):
                dropped_train[source] += 1
            else:
                kept[source].append(r)
    kept_val = []
    for r in val:
        if r.source not in p.skip_sources and index.query(r):
            dropped_val[r.source] += 1
        else:
            kept_val.append(r)
    return kept, kept_val, dropped_train, dropped_val


def evaluated_texts(cfg: Params, val: list[Record]) -> dict[str, list[str]]:
    """What the pipeline evaluates on, by name: the texts training prompts must not contain."""
    def questions(path) -> list[str]:
        entries = read_yaml(path)
        return [e["question"] for e in entries if isinstance(e, dict) and isinstance(e.get("question"), str)] \
            if isinstance(entries, list) else []

    return {"validation": [prompt_text(r) for r in val],
            "identity_questions": questions(cfg.evaluate.identity_questions),
            "retention_probes": questions(cfg.evaluate.retention_probes),
            "sanity_prompts": list(cfg.sanity_check.prompts)}


def check_contamination(train: dict[str, list[Record]], evaluated: dict[str, list[str]], n: int, drop: bool
                        ) -> tuple[dict[str, list[Record]], dict]:
    """Training records whose prompt shares a word n-gram with an evaluated text, counted by
    evaluated set and source (removed when ``drop``); returns the kept records and the counts."""
    index = NgramIndex(evaluated, n)
    hits = {name: dict.fromkeys(sorted(train), 0) for name in evaluated}
    kept, removed = {}, dict.fromkeys(sorted(train), 0)
    for source in sorted(train):
        kept[source] = []
        for r in tqdm(train[source], desc=f"contamination: {source}", unit="record", mininterval=1):
            found = index.hits(prompt_text(r))
            for name in found:
                hits[name][source] += 1
            if found and drop:
                removed[source] += 1
            else:
                kept[source].append(r)
    return kept, {"ngram": n, "action": "drop" if drop else "report", "train_records_hit": hits,
                  "removed": removed}


def accounting_names() -> list[str]:
    """The row accountings the earlier data stages write, by name: each output
    ``${paths.metrics_dir}/<name>.json`` of a stage in dvc.yaml, in the order of the stages there."""
    stages = read_pipeline().get("stages") or {}
    names = [match[1] for stage in stages.values() if isinstance(stage, dict) for out in stage.get("outs") or []
             if isinstance(out, str) and (match := ACCOUNTING_OUT.fullmatch(out))]
    if not names:
        raise PipelineError(f"{PIPELINE_FILE}: no stage writes its row accounting to "
                            "${paths.metrics_dir}/<stage>.json")
    return names


def upstream_drops(cfg: Params, sources: list[str]) -> dict[str, dict[str, int]]:
    """Rows dropped by reason at each earlier data stage, from the accounting it wrote: a stage's
    own (``{"dropped": {...}, ...}``) under its name, then those kept per source (``{source:
    {"dropped": {...}, ...}}``) under ``<stage>_<source>``, each kind in dvc.yaml's order. An
    accounting missing, of other sources than ``sources`` (stale) or of neither shape is a
    PipelineError naming the file."""
    whole, per_source = {}, {}
    for name in accounting_names():
        path = cfg.paths.metrics_file(name)
        accounting = read_json(path)
        if not isinstance(accounting, dict) or not accounting:
            raise PipelineError(f"{path}: not a row accounting (a JSON object of rows in, out and dropped)")
        if all(isinstance(a, dict) and "dropped" in a for a in accounting.values()):
            if sorted(accounting) != sources:
                raise PipelineError(f"{path}: the row accounting of {', '.join(sorted(accounting))}, not of the "
                                    f"sources in params datasets ({', '.join(sources)}); rerun its stage")
            per_source |= {f"{name}_{s}": accounting[s]["dropped"] for s in sources}
        elif isinstance(accounting.get("dropped"), dict):
            whole[name] = accounting["dropped"]
        else:
            raise PipelineError(f"{path}: not a row accounting (no 'dropped' counts, nor one per source)")
    return whole | per_source


def main(cfg: Params) -> dict:
    p = cfg.merge_data
    sources = sorted(cfg.datasets)
    dropped = upstream_drops(cfg, sources)  # first: a missing or stale accounting fails before any work
    train = {s: read_source(cfg.paths.split_file(s, "train")) for s in sources}
    train[REPLAY_SOURCE] = read_source(cfg.paths.replay)
    val = [r for s in sources for r in read_source(cfg.paths.split_file(s, "val"))]
    rows_in = sum(map(len, train.values())) + len(val)
    train, val, near_train, near_val = drop_near_duplicates(train, val, p.near_duplicates)
    train, contamination = check_contamination(train, evaluated_texts(cfg, val), p.contamination.ngram,
                                               p.contamination.action == "drop")
    merged = {"val": val}
    merged["train"], mix = apply_mix(train, p.mix, p.seed)
    merged["val"], cross_source = drop_val_overlap(merged["train"], merged["val"])
    overlap = prompt_overlap(merged["train"], merged["val"])
    if overlap:
        raise PipelineError(f"{cfg.paths.val}: {overlap} prompts also occur in {cfg.paths.train}")
    write_jsonl(cfg.paths.train, merged["train"])
    write_jsonl(cfg.paths.val, merged["val"])

    left_out = sum(m["left_out"] for m in mix.values())
    repeated = sum(m["repeated"] for m in mix.values())
    dropped["merge_data"] = {"prompt_in_train": cross_source, "left_out_by_mix": left_out,
                             "near_duplicate": sum(near_train.values()), "val_near_train": sum(near_val.values()),
                             "contaminated": sum(contamination["removed"].values())}
    report = {split: split_report(merged[split]) for split in SPLITS}
    report |= {"mix": mix, "dropped": dropped, "train_val_prompt_overlap": overlap,
               "near_duplicates": {"threshold": p.near_duplicates.threshold, "train": near_train, "val": near_val},
               "contamination": contamination}
    write_json(cfg.paths.report, report)
    # rows in + repeated = rows out + dropped
    write_json(cfg.paths.merge_metrics, {
        "rows_in": rows_in, "rows_out": len(merged["train"]) + len(merged["val"]),
        "train": len(merged["train"]), "val": len(merged["val"]),
        "added": {"repeated_by_mix": repeated}, "dropped": dropped["merge_data"]})
    log.info("wrote %d train and %d val records; training mix %s; train/val prompt overlap %d",
             len(merged["train"]), len(merged["val"]),
             ", ".join(f"{s} {m['wanted']} of {m['available']}" for s, m in mix.items()), overlap)
    return report

if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
