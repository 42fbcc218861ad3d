"""Entry-point glue shared by every stage: logging, params, and one-line errors.

A stage module ends with ``if __name__ == "__main__": raise SystemExit(run(main))``.
Bad input (a ``PipelineError``) is reported as one line on stderr with exit code 1;
``--debug`` or ``LOG_LEVEL=DEBUG`` adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from src.config import Params, load_params
from src.errors import PipelineError

log = logging.getLogger(__name__)


def run(main: Callable[..., object], description: str | None = None,
        add_args: Callable[[argparse.ArgumentParser], None] | None = None,
        argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging, load and validate params, call ``main(cfg, **args)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level and show tracebacks")
    if add_args:
        add_args(parser)
    args = vars(parser.parse_args(argv))
    debug = args.pop("debug") or os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    logging.basicConfig(
        level=logging.DEBUG if debug else os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg: Params = load_params()
        log.debug("params: %s", cfg.model_dump_json())
        main(cfg, **args)
    except PipelineError as err:
        if debug:
            log.exception("failed")
        _close_progress_bars()  # so the error starts a line of its own
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _close_progress_bars() -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
