"""Stage ``sanity_check``: the params' prompts through the base and the fine-tuned model.

Greedy, batched, stopping at EOS, with no system message: each model folder's own chat
template supplies its default, as it does for any client. Writes ``paths.sanity_results`` (CSV: prompt,
both answers, whether each hit ``max_new_tokens`` before EOS) and
``paths.sanity_report`` (the same side by side in Markdown).

    python -m src.stages.sanity_check
    dvc exp run -S 'sanity_check.prompts=["Who made you?"]'   # reruns only this stage
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from src.cli import run
from src.config import Params
from src.files import open_atomic
from src.generation import Answer, generate
from src.modeling import compute_dtype, load_for_inference

log = logging.getLogger(__name__)

COLUMNS = ["prompt", "base_output", "base_hit_limit", "finetuned_output", "finetuned_hit_limit"]


def answers_of(model_dir: str, cfg: Params, conversations: list, label: str) -> list[Answer]:
    sc = cfg.sanity_check
    tokenizer, model = load_for_inference(model_dir, compute_dtype(cfg.train.precision),
                                          cfg.fetch_base_model.trust_remote_code)
    return generate(model, tokenizer, conversations, sc.max_new_tokens, sc.batch_size, desc=label)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in (text or "(empty)").splitlines()) or "> (empty)"


def report(rows: list[dict], max_new_tokens: int) -> str:
    ended = sum(not r["finetuned_hit_limit"] for r in rows)
    parts = ["# Sanity check: base vs fine-tuned\n",
             f"Greedy answers, at most {max_new_tokens} new tokens. The fine-tuned model stopped "
             f"by itself on {ended} of {len(rows)} prompts.\n"]
    for i, r in enumerate(rows, 1):
        parts.append(f"## {i}. {r['prompt']}\n")
        for who in ("base", "finetuned"):
            flag = " (hit the token limit)" if r[f"{who}_hit_limit"] else ""
            parts.append(f"**{'Base' if who == 'base' else 'Fine-tuned'}**{flag}\n\n{_quote(r[f'{who}_output'])}\n")
    return "\n".join(parts)


def main(cfg: Params) -> None:
    sc, paths = cfg.sanity_check, cfg.paths
    conversations = [[{"role": "user", "content": p}] for p in sc.prompts]
    base = answers_of(paths.base_model, cfg, conversations, "base model")
    tuned = answers_of(paths.merged_model, cfg, conversations, "fine-tuned model")
    rows = [{"prompt": p, "base_output": b.text, "base_hit_limit": b.hit_limit,
             "finetuned_output": t.text, "finetuned_hit_limit": t.hit_limit}
            for p, b, t in zip(sc.prompts, base, tuned)]
    Path(paths.sanity_results).parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(paths.sanity_results) as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open_atomic(paths.sanity_report) as f:
        f.write(report(rows, sc.max_new_tokens))
    log.info("wrote %s and %s; fine-tuned answers that hit the limit: %d of %d", paths.sanity_results,
             paths.sanity_report, sum(r["finetuned_hit_limit"] for r in rows), len(rows))


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__))
