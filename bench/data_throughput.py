"""process_data at scale: the stage on subsets of a 1M-row Orca file, against a naive
baseline (pandas reads the three columns the stage needs, whole, then samples), each in its
own process; the stage on the same rows written as a single row group, the layout where a
reader that takes whole column chunks holds a gigabyte at once; and the stage on a 10k-row
subset of a 1M-line JSON Lines file in the OpenAI ``messages`` format (about 2.8 GB).

For each case it prints wall time and peak RSS; then the baseline/stage ratios for the 10k
subset. Goals for the 10k subset, any layout or format: at most 15 s and 1.5 GB peak RSS on
2 cores. The last two lines are the summary: the Orca parquet cases, then the messages file.

    python bench/make_big_orca.py                    # bench/data/orca_1m.parquet, once
    python bench/make_big_messages.py                # bench/data/messages_1m.jsonl from it, once
    python bench/data_throughput.py [--file PATH] [--messages PATH]
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

# The stage's work on a source "big" added to params' datasets (src/sources.py process_source):
# the orca entry's max_chars and seed, the case's file, format and subset; it writes
# <out>/big.jsonl; its row accounting is returned.
STAGE = """
from src.config import load_params
from src.files import write_json
from src.sources import process_source
cfg = load_params({root!r})
paths = cfg.paths.model_copy(update={{"processed_dir": {out!r}, "metrics_dir": {out!r}}})
spec = cfg.datasets["orca"].model_copy(update={{"path": {file!r}, "format": {fmt!r}, "columns": {{}},
                                               "subset_rows": {rows}, "subset_fraction": None}})
metrics = process_source(cfg.model_copy(update={{"paths": paths, "datasets": {{**cfg.datasets, "big": spec}}}}), "big")
write_json(paths.metrics_file("process_data"), {{"big": metrics}})
"""

NAIVE = """
import pandas as pd
frame = pd.read_parquet({file!r}, columns=["system_prompt", "question", "response"])
subset = frame.sample(n={rows}, random_state=0)
subset.to_json({out!r} + "/big.jsonl", orient="records", lines=True)
"""

ONE_GROUP = """
import pyarrow.parquet as pq
table = pq.read_table({file!r})
pq.write_table(table, {out!r}, row_group_size=table.num_rows)
"""


def measure(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh Python; return (wall seconds, peak RSS in GB) of that process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
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
    parser.add_argument("--file", type=Path, default=ROOT / "bench/data/orca_1m.parquet",
                        help="the Orca-schema parquet file (bench/make_big_orca.py)")
    parser.add_argument("--messages", type=Path, default=ROOT / "bench/data/messages_1m.jsonl",
                        help="the messages-format JSON Lines file (bench/make_big_messages.py)")
    args = parser.parse_args()
    for path, script in ((args.file, "make_big_orca.py"), (args.messages, "make_big_messages.py")):
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found; write it with python bench/{script}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "one-row-group.parquet"
        measure(ONE_GROUP.format(file=str(args.file), out=str(single)))  # in its own process: this one stays small
        for name, template, rows, file, fmt in (
                ("stage 10k", STAGE, 10_000, args.file, "orca"),
                ("stage 100k", STAGE, 100_000, args.file, "orca"),
                ("naive 10k", NAIVE, 10_000, args.file, "orca"),
                ("stage 10k, 1 group", STAGE, 10_000, single, "orca"),
                ("messages jsonl 10k", STAGE, 10_000, args.messages, "messages")):
            out = Path(tmp) / name.replace(" ", "-").replace(",", "")
            out.mkdir()
            results[name] = measure(template.format(root=str(ROOT), file=str(file), fmt=fmt, out=str(out),
                                                    rows=rows))
            written = sum(1 for _ in (out / "big.jsonl").open(encoding="utf-8"))
            metrics = out / "process_data.json"
            dropped = ({k: v for k, v in json.loads(metrics.read_text())["big"]["dropped"].items() if v} or "none"
                       if metrics.exists() else "-")
            print(f"{name:>18}: {results[name][0]:6.1f} s, peak RSS {results[name][1]:.2f} GB, "
                  f"{written:,} records written (dropped: {dropped})")
    (s_t, s_m), (n_t, n_m), (m_t, m_m) = results["stage 10k"], results["naive 10k"], results["messages jsonl 10k"]
    print(f"summary: 10k subset {s_t:.1f} s (goal <= 15), peak RSS {s_m:.2f} GB (goal <= 1.5); "
          f"naive/stage time {n_t / s_t:.1f}x, memory {n_m / s_m:.1f}x; 100k subset {results['stage 100k'][0]:.1f} s, "
          f"{results['stage 100k'][1]:.2f} GB; one row group, 10k: {results['stage 10k, 1 group'][0]:.1f} s, "
          f"{results['stage 10k, 1 group'][1]:.2f} GB; file {args.file.stat().st_size / 1e9:.2f} GB")
    print(f"summary: messages JSONL 10k subset {m_t:.1f} s (goal <= 15{'' if m_t <= 15 else ', MISSED'}), "
          f"peak RSS {m_m:.2f} GB (goal <= 1.5{'' if m_m <= 1.5 else ', MISSED'}); "
          f"file {args.messages.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
