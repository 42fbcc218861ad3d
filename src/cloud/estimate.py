"""What a profile's training will cost in the cloud, before it is launched.

    python -m src.cloud.estimate profiles/llama2-7b-qlora.yaml
    python -m src.cloud.estimate profiles/llama2-7b-qlora.yaml --gpu A10G --tokens-per-second 900

tokens = optimizer steps x sequences per step x tokens per sequence, where the steps are the
profile's ``max_steps``, or its epochs over the training set's records; hours = tokens / tokens
per second on the GPU; cost = hours x the cheapest hourly price of one such GPU in SkyPilot's
catalog (spot, as sky-training.yaml asks, or ``--on-demand``). Every figure it assumed is printed
beside the result.

- Records and tokens per record: ``data/final/train.jsonl`` as the workspace built it (build it
  with the profile's data first: ``dvc exp run $(python -m src.cloud.profile P) merge_data``, no
  GPU needed), its characters at ``--chars-per-token``; without it, ``--records`` and
  ``max_length`` tokens per record (an upper bound).
- Tokens per second: ``--tokens-per-second`` (a run's ``tokens_per_second`` in ``dvc exp show``),
  else the figure recorded here for that GPU and base model (bench/RESULTS.md).
- Training only: setup, downloads, evaluation, the benchmark and the export come on top.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from src.cli import one_line_errors
from src.cloud.profile import budget, load_profile, merged, read_yaml
from src.config import PARAMS_FILE
from src.errors import PipelineError

log = logging.getLogger(__name__)

TRAINING_YAML = Path("sky-training.yaml")
TRAIN_FILE = Path("data/final/train.jsonl")
CHARS_PER_TOKEN = 3.8  # English text under a Llama-style 32k vocabulary
TEMPLATE_TOKENS = 6  # a chat template's markers around each turn
# Real (non-padding) tokens per second measured on a GPU for a base model with the profile's
# training settings: (GPU, fetch_base_model.model) -> (tokens/s, where it was measured).
RECORDED = {
    ("H200", "llama-2-7b-chat"): (3469.0, "bench/RESULTS.md: GPU check, Llama-2-7B shape, 4-bit QLoRA r 64, "
                                          "4 packed rows of 1024 tokens per step, sdpa"),
}


def candidate_gpus(yaml_path: Path = TRAINING_YAML) -> list[str]:
    """The GPUs sky-training.yaml lets SkyPilot choose from (``resources.any_of``)."""
    resources = read_yaml(yaml_path).get("resources") or {}
    found = [str(r["accelerators"]).split(":")[0] for r in resources.get("any_of") or [] if r.get("accelerators")]
    if resources.get("accelerators"):
        found.append(str(resources["accelerators"]).split(":")[0])
    return found


def cheapest(gpu: str, spot: bool, clouds: list[str]) -> dict | None:
    """The cheapest offer of one ``gpu`` in SkyPilot's catalogs of ``clouds``: cloud, region,
    instance type and hourly price; None when none offers it."""
    from sky import catalog

    offers = []
    for cloud in clouds:
        try:
            found = catalog.list_accelerators(gpus_only=True, name_filter=f"^{gpu}$", quantity_filter=1,
                                              clouds=cloud, case_sensitive=False, all_regions=True)
        except Exception as err:  # a catalog out of reach: one line
            raise PipelineError(f"{cloud}: SkyPilot's catalog cannot be read ({' '.join(str(err).split())[:200]})") \
                from err
        for items in found.values():
            for item in items:
                price = item.spot_price if spot else item.price
                if price is not None and not math.isnan(price) and price > 0:
                    offers.append({"cloud": item.cloud, "region": item.region, "instance_type": item.instance_type,
                                   "price": float(price)})
    return min(offers, key=lambda o: o["price"]) if offers else None


def training_tokens(params: dict, records: int | None, chars_per_token: float,
                    train_file: Path = TRAIN_FILE) -> tuple[float, list[str]]:
    """(tokens the training will compute on, the assumptions behind the figure)."""
    sft = params["train"]["sft"]
    per_step = int(sft.get("per_device_train_batch_size", 8)) * int(sft.get("gradient_accumulation_steps", 1))
    max_length = int(sft.get("max_length") or 1024)
    said = []
    if train_file.exists() and records is None:
        records, chars, turns = 0, 0, 0
        with train_file.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    said_turns = [*record.get("prompt", []), *record.get("completion", [])]
                    records, turns = records + 1, turns + len(said_turns)
                    chars += sum(len(turn.get("content") or "") for turn in said_turns)
        per_record = min(max_length, (chars / chars_per_token + TEMPLATE_TOKENS * turns) / max(records, 1))
        said.append(f"{records:,} records in {train_file} as the workspace built it (the profile's data: "
                    f"dvc exp run $(python -m src.cloud.profile PROFILE) merge_data)")
        said.append(f"{per_record:,.0f} tokens per record: their text at {chars_per_token} characters per token, "
                    f"{TEMPLATE_TOKENS} more per turn for the chat template, at most max_length {max_length}")
    else:
        per_record = max_length
        said.append(f"{max_length} tokens per record (max_length: an upper bound; build {train_file} for a closer one)")
    packing = bool(sft.get("packing"))
    steps = int(sft.get("max_steps", -1))
    if steps > 0:
        sequences = steps * per_step
        tokens = sequences * (max_length if packing else per_record)
        said.append(f"max_steps {steps} x {per_step} {'packed rows' if packing else 'records'} per step")
    else:
        if records is None:
            raise PipelineError(f"{train_file} is missing: build it with the profile's data, or pass --records N")
        epochs = float(sft.get("num_train_epochs", 3))
        tokens = epochs * records * per_record
        said.append(f"{epochs:g} epoch(s) over {records:,} records" + (" (packed: padding-free)" if packing else ""))
    return tokens, said


def estimate(profile: Path, gpus: list[str], tokens_per_second: float | None, records: int | None,
             spot: bool, clouds: list[str], chars_per_token: float) -> list[dict]:
    overlay, _ = load_profile(profile)
    params = merged(read_yaml(Path(PARAMS_FILE)), overlay)
    model = params["fetch_base_model"]["model"]
    tokens, said = training_tokens(params, records, chars_per_token)
    print(f"{profile}: {model}, {tokens:,.0f} tokens of training")
    rows = []
    for gpu in gpus:
        offer = cheapest(gpu, spot, clouds)
        rate, source = (tokens_per_second, "--tokens-per-second") if tokens_per_second else \
            RECORDED.get((gpu.upper(), model), (None, None))
        hours = tokens / rate / 3600 if rate else None
        cost = hours * offer["price"] if hours is not None and offer else None
        rows.append({"gpu": gpu, "offer": offer, "tokens_per_second": rate, "source": source, "hours": hours,
                     "cost_usd": cost})
        where = f"{offer['cloud']} {offer['region']} {offer['instance_type']} ${offer['price']:.4f}/h" if offer \
            else "not in the catalogs"
        print(f"  {gpu:<10} {where:<52} " + (f"{rate:>7,.0f} tokens/s {hours:>9,.1f} h  ${cost:>10,.2f}"
                                             if cost is not None else "tokens/s unknown" if offer else ""))
    cap = budget(profile)
    assumed = [*said, f"{'spot' if spot else 'on-demand'} prices, the cheapest region of {', '.join(clouds)} in "
               "SkyPilot's catalog, one GPU"]
    assumed += [f"{r['gpu']} tokens/s from {r['source']}" for r in rows if r["source"]]
    if any(r["offer"] and r["tokens_per_second"] is None for r in rows):
        assumed.append("tokens/s recorded for " + ", ".join(f"{g} with {m}" for g, m in RECORDED)
                       + " only: pass --tokens-per-second (a run's tokens_per_second in dvc exp show)")
    assumed.append("training only: setup, downloads, evaluation, the benchmark and the export come on top")
    if cap is not None:
        assumed.append(f"the profile's max_cost_usd: ${cap:,.2f}")
    print("assumptions:\n" + "\n".join(f"  - {line}" for line in assumed))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="a profile file, e.g. profiles/llama2-7b-qlora.yaml")
    parser.add_argument("--gpu", action="append", help="a GPU name (repeatable); default: sky-training.yaml's")
    parser.add_argument("--tokens-per-second", type=float, help="measured real tokens/s of this training on the GPU")
    parser.add_argument("--records", type=int, help="training records, when data/final/train.jsonl is not built")
    parser.add_argument("--on-demand", action="store_true", help="on-demand prices (default: spot)")
    parser.add_argument("--clouds", default="aws,gcp,azure", help="catalogs to search (default: aws,gcp,azure)")
    parser.add_argument("--chars-per-token", type=float, default=CHARS_PER_TOKEN)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def go():
        rows = estimate(args.profile, args.gpu or candidate_gpus(), args.tokens_per_second, args.records,
                        not args.on_demand, [c.strip() for c in args.clouds.split(",") if c.strip()],
                        args.chars_per_token)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")

    return one_line_errors(go)


if __name__ == "__main__":
    raise SystemExit(main())
