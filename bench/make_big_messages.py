"""Write a large JSON Lines file in the OpenAI ``messages`` format for the data benchmarks:
one conversation per line, derived from the rows of the 1M-row Orca parquet
(bench/make_big_orca.py), deterministic for a seed. Not committed; bench/data/ is git-ignored.

Each line is ``{"id": ..., "messages": [...]}``: an optional system message (the row's system
prompt; none where it is empty, a ``developer`` role now and then), the user's question and the
assistant's response, and in about a quarter of the lines a second, shorter user/assistant
exchange (sliced from other rows), so lengths vary as the Orca rows' do, with a longer tail.
A few percent of the lines are ones process_data drops, each for its own reason: an empty
reply, a ``tool`` message (unknown role), content given as a list of parts (wrong type), two
user messages in a row (turn order), no reply at all; and some end with an unanswered user
message (kept, the turn cut). Rows over ``max_chars`` (6000) are dropped as too long.

    python bench/make_big_orca.py            # bench/data/orca_1m.parquet, once
    python bench/make_big_messages.py [--rows 1000000] [--orca bench/data/orca_1m.parquet]
                                      [--out bench/data/messages_1m.jsonl] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

# What a line is, by its share of the lines (the rest are plain conversations).
DEFECTS = {
    "empty_reply": 0.010,        # the last assistant message is ""
    "unknown_role": 0.008,       # a {"role": "tool", ...} message before the reply
    "wrong_type": 0.005,         # the user's content as [{"type": "text", "text": ...}]
    "turn_order": 0.005,         # the question split into two user messages in a row
    "no_assistant_reply": 0.004,  # system and user only
    "unanswered_tail": 0.010,    # kept: a trailing user message with no reply (cut)
}
SECOND_EXCHANGE = 0.25
DEVELOPER_ROLE = 0.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="lines to write (at most the parquet's rows)")
    parser.add_argument("--orca", type=Path, default=ROOT / "bench/data/orca_1m.parquet")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/data/messages_1m.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.orca.is_file():
        raise SystemExit(f"error: {args.orca}: not found; write it with python bench/make_big_orca.py")
    pf = pq.ParquetFile(args.orca)
    if args.rows > pf.metadata.num_rows:
        raise SystemExit(f"error: --rows {args.rows}: {args.orca} has {pf.metadata.num_rows:,} rows")
    rng = np.random.default_rng(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    kinds = list(DEFECTS)
    cumulative = np.cumsum([DEFECTS[k] for k in kinds])
    tally, written, start = Counter(), 0, time.perf_counter()
    with partial.open("w", encoding="utf-8") as out:
        for batch in pf.iter_batches(batch_size=50_000, columns=["id", "system_prompt", "question", "response"]):
            n = min(batch.num_rows, args.rows - written)
            if n <= 0:
                break
            ids, systems, questions, responses = (batch.column(c).to_pylist()[:n] for c in
                                                  ("id", "system_prompt", "question", "response"))
            # the second exchange: other rows' texts of the batch, cut shorter
            other = rng.permutation(n)
            second = rng.random(n) < SECOND_EXCHANGE
            follow_len = np.clip(rng.lognormal(np.log(150), 0.8, n), 10, 2000).astype(np.int64)
            answer_len = np.clip(rng.lognormal(np.log(500), 0.8, n), 20, 4000).astype(np.int64)
            developer = rng.random(n) < DEVELOPER_ROLE
            defect = np.searchsorted(cumulative, rng.random(n), side="right")  # len(kinds): none
            for i in range(n):
                messages = []
                if systems[i]:
                    messages.append({"role": "developer" if developer[i] else "system", "content": systems[i]})
                messages.append({"role": "user", "content": questions[i]})
                messages.append({"role": "assistant", "content": responses[i]})
                if second[i]:
                    j = other[i]
                    messages.append({"role": "user", "content": questions[j][:follow_len[i]].strip() + "?"})
                    messages.append({"role": "assistant", "content": responses[j][:answer_len[i]].strip()})
                kind = kinds[defect[i]] if defect[i] < len(kinds) else "plain"
                if kind == "empty_reply":
                    messages[-1]["content"] = ""
                elif kind == "unknown_role":
                    messages.insert(len(messages) - 1, {"role": "tool", "content": '{"result": "ok"}'})
                elif kind == "wrong_type":
                    messages[-2]["content"] = [{"type": "text", "text": messages[-2]["content"]}]
                elif kind == "turn_order":
                    text = messages[-2]["content"]
                    cut = len(text) // 2
                    messages[-2:-1] = [{"role": "user", "content": text[:cut] or "hello"},
                                       {"role": "user", "content": text[cut:] or "there"}]
                elif kind == "no_assistant_reply":
                    messages = [m for m in messages[:2] if m["role"] != "assistant"]
                elif kind == "unanswered_tail":
                    messages.append({"role": "user", "content": "thanks, and one more thing"})
                tally[kind] += 1
                tally["two_exchanges"] += bool(second[i]) and kind != "no_assistant_reply"
                out.write(json.dumps({"id": ids[i], "messages": messages}, ensure_ascii=False))
                out.write("\n")
            written += n
    partial.replace(args.out)
    print(f"wrote {args.out}: {written:,} lines, {args.out.stat().st_size / 1e9:.2f} GB, "
          f"in {time.perf_counter() - start:.0f} s; {dict(sorted(tally.items()))}")


if __name__ == "__main__":
    main()
