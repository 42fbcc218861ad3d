"""process_orca_data at scale: the stage on subsets of a 1M-row Orca file, against a naive
baseline (pandas reads the three columns the stage needs, whole, then samples), each in its
own process; and the stage on the same rows written as a single row group, the layout where a
reader that takes whole column chunks holds a gigabyte at once.

For each case it prints wall time and peak RSS; then the baseline/stage ratios for the 10k
subset. Goals for the 10k subset, either layout: at most 15 s and 1.5 GB peak RSS on 2 cores.
The last line is a one-line summary.

    python bench/make_big_orca.py                    # bench/data/orca_1m.parquet, once
    python bench/data_throughput.py [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGE = """
import sys
from src.config import load_params
from src.stages import process_orca_data
cfg = load_params({root!r})
paths = cfg.paths.model_copy(update={{
    "raw": cfg.paths.raw.model_copy(update={{"orca": {file!r}}}),
    "processed": cfg.paths.processed.model_copy(update={{"orca": {out!r} + "/orca.jsonl"}}),
    "metrics_dir": {out!r}}})
section = cfg.process_orca_data.model_copy(update={{"subset_rows": {rows}, "subset_fraction": None}})
process_orca_data.main(cfg.model_copy(update={{"paths": paths, "process_orca_data": section}}))
"""

NAIVE = """
import pandas as pd
frame = pd.read_parquet({file!r}, columns=["system_prompt", "question", "response"])
subset = frame.sample(n={rows}, random_state=0)
subset.to_json({out!r} + "/orca.jsonl", orient="records", lines=True)
"""

ONE_GROUP = """
import pyarrow.parquet as pq
table = pq.read_table({file!r})
pq.write_table(table, {out!r}, row_group_size=table.num_rows)
"""


def measure(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh Python; return (wall seconds, peak RSS in GB) of that process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: a benchmark process failed:\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=ROOT / "bench/data/orca_1m.parquet")
    args = parser.parse_args()
    if not args.file.is_file():
        raise SystemExit(f"error: {args.file}: not found; write it with python bench/make_big_orca.py")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "one-row-group.parquet"
        measure(ONE_GROUP.format(file=str(args.file), out=str(single)))  # in its own process: this one stays small
        for name, template, rows, file in (("stage 10k", STAGE, 10_000, args.file),
                                           ("stage 100k", STAGE, 100_000, args.file),
                                           ("naive 10k", NAIVE, 10_000, args.file),
                                           ("stage 10k, 1 group", STAGE, 10_000, single)):
            out = Path(tmp) / name.replace(" ", "-").replace(",", "")
            out.mkdir()
            results[name] = measure(template.format(root=str(ROOT), file=str(file), out=str(out), rows=rows))
            written = sum(1 for _ in (out / "orca.jsonl").open(encoding="utf-8"))
            metrics = out / "process_orca_data.json"
            kept = json.loads(metrics.read_text())["dropped"] if metrics.exists() else "-"
            print(f"{name:>18}: {results[name][0]:6.1f} s, peak RSS {results[name][1]:.2f} GB, "
                  f"{written:,} records written (dropped: {kept})")
    (s_t, s_m), (n_t, n_m) = results["stage 10k"], results["naive 10k"]
    print(f"summary: 10k subset {s_t:.1f} s (goal <= 15), peak RSS {s_m:.2f} GB (goal <= 1.5); "
          f"naive/stage time {n_t / s_t:.1f}x, memory {n_m / s_m:.1f}x; 100k subset {results['stage 100k'][0]:.1f} s, "
          f"{results['stage 100k'][1]:.2f} GB; one row group, 10k: {results['stage 10k, 1 group'][0]:.1f} s, "
          f"{results['stage 10k, 1 group'][1]:.2f} GB; file {args.file.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
