"""Write a large parquet file in the Open-Orca schema (1M-GPT4-Augmented: id, system_prompt,
question, response) for the data benchmarks: 1,000,000 rows, about 1 GB, in seconds per
100k rows. Not committed; bench/data/ is git-ignored.

Lengths follow a long-tailed (log-normal) distribution like the real file's: questions of a
few hundred characters with a tail into the thousands, longer responses, and a handful of
system prompts (some empty). The text is random words, so it compresses about as real text does.

    python bench/make_big_orca.py [--rows 1000000] [--out bench/data/orca_1m.parquet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PROMPTS = [
    "",
    "You are an AI assistant. You will be given a task. You must generate a detailed and long answer.",
    "You are a helpful assistant, who always provide explanation. Think like you are answering to a five year old.",
    "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
    "User will you give you a task with some instruction. "
    "Your job is follow the instructions as faithfully as you can.",
    "You are an AI assistant that helps people find information.",
    "Explain how you used the definition to come up with the answer.",
    "You should describe the task and explain your answer. While answering a multiple choice question, first output "
    "the correct answer(s). Then explain why other answers are wrong.",
]


def corpus(rng: np.random.Generator, chars: int) -> str:
    """Random words (Zipf-distributed over a 20,000-word vocabulary) joined by spaces."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    vocab = ["".join(map(chr, rng.choice(letters, size=n))) for n in rng.integers(2, 11, size=20_000)]
    ranks = np.minimum(rng.zipf(1.2, size=chars // 5), len(vocab)) - 1
    return " ".join(vocab[r] for r in ranks)


def lengths(rng: np.random.Generator, n: int, median: float, sigma: float, cap: int) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, size=n), 8, cap).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/data/orca_1m.parquet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    text = corpus(rng, 64 * 2**20)  # 64 MiB of words; rows are slices of it at random offsets
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    schema = pa.schema([("id", pa.string()), ("system_prompt", pa.string()), ("question", pa.string()),
                        ("response", pa.string())])
    start, chunk = time.perf_counter(), 100_000
    with pq.ParquetWriter(partial, schema, compression="snappy") as writer:
        for first in range(0, args.rows, chunk):
            n = min(chunk, args.rows - first)
            q_len, r_len = lengths(rng, n, 680, 0.9, 12_000), lengths(rng, n, 1000, 0.8, 12_000)
            q_at = rng.integers(0, len(text) - 12_000, size=n)
            r_at = rng.integers(0, len(text) - 12_000, size=n)
            table = pa.table({
                "id": [f"cot.{first + i}" for i in range(n)],
                "system_prompt": [SYSTEM_PROMPTS[k] for k in rng.integers(0, len(SYSTEM_PROMPTS), size=n)],
                "question": [text[a:a + m] for a, m in zip(q_at.tolist(), q_len.tolist())],
                "response": [text[a:a + m] for a, m in zip(r_at.tolist(), r_len.tolist())],
            }, schema=schema)
            writer.write_table(table, row_group_size=chunk)
    partial.replace(args.out)
    print(f"wrote {args.out}: {args.rows:,} rows, {args.out.stat().st_size / 1e9:.2f} GB, "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
