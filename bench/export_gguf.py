"""Export speed, size and fidelity: the merged model as f16 and q8_0 GGUF files, timed, then the
held-out identity questions (evaluate's, scored as evaluate scores them) asked of each file in
llama.cpp, against the merged model's answers in transformers from the last evaluate run.

    python bench/export_gguf.py                  # after dvc exp run: models/merged, the answers file
    python bench/export_gguf.py --out /tmp/gguf  # where the files go (default: a temporary folder)

Prints one line per file and a summary line with the goals (export of both files at most 30 s
on 2 cores, q8_0 at most 0.55 of f16's size, llama.cpp right as often as transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from src.config import load_params
    from src.gguf_writer import write_gguf
    from src.scoring import identity_checks, identity_correct, other_terms

    cfg = load_params()
    folder = Path(cfg.paths.merged_model)
    out = args.out or Path(tempfile.mkdtemp(prefix="gguf-"))
    answers = [json.loads(line) for line in open(cfg.paths.evaluation_answers, encoding="utf-8")]
    held_out = [r for r in answers if r["kind"] == "identity/unseen"]
    checks = identity_checks(cfg.evaluate.identity_questions, cfg.generate_identity_data)
    others = other_terms(cfg.generate_identity_data)
    right_hf = sum(identity_correct(c, r["finetuned"], others) for c, r in zip(checks, held_out, strict=True))

    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sizes, right, stopped = {}, {}, {}
    for kind in ("f16", "q8_0"):
        t = time.monotonic()
        path = write_gguf(folder, out / f"model-{kind}.gguf", kind, cfg.generate_identity_data.name, tokenizer)
        sizes[kind] = path.stat().st_size
        print(f"{path.name}: {sizes[kind] / 1e6:.1f} MB in {time.monotonic() - t:.1f} s")
    seconds = time.monotonic() - start
    for kind in ("f16", "q8_0"):
        llm = Llama(str(out / f"model-{kind}.gguf"), n_ctx=1024, verbose=False, seed=0)
        replies = [llm.create_chat_completion([{"role": "user", "content": c.question}], temperature=0.0,
                                              repeat_penalty=1.0, max_tokens=cfg.evaluate.max_new_tokens)
                   ["choices"][0] for c in checks]
        right[kind] = sum(identity_correct(c, r["message"]["content"], others) for c, r in zip(checks, replies))
        stopped[kind] = sum(r["finish_reason"] == "stop" for r in replies)
        print(f"llama.cpp {kind}: {right[kind]}/{len(checks)} held-out identity questions right, "
              f"{stopped[kind]} stopped at EOS")
    ratio = sizes["q8_0"] / sizes["f16"]
    print(f"summary: export f16+q8_0 {seconds:.1f} s (goal <= 30); q8_0/f16 size {ratio:.2f} (goal <= 0.55); "
          f"held-out identity right: transformers {right_hf}/{len(checks)}, llama.cpp f16 {right['f16']}, "
          f"q8_0 {right['q8_0']} (goal: q8_0 >= transformers)")


if __name__ == "__main__":
    main()
