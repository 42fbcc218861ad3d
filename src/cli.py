"""Entry-point glue shared by every stage: credentials, logging, params, and one-line errors.

A stage module ends with ``if __name__ == "__main__": raise SystemExit(run(main))``.
Bad input (a ``PipelineError``) is reported as one line on stderr with exit code 1;
``--debug`` or ``LOG_LEVEL=DEBUG`` adds the traceback.

A stage sees no credential it does not use: before anything else, ``run`` starts the stage
again in the same process (``execve``) with every name in ``SECRET_ENV`` removed from its
environment but those the stage names (the Hub token for ``fetch_base_model``, the DVC Studio
token for ``train``'s live metrics). Code a model brings (``trust_remote_code``) or a library
reads cannot see a git token or cloud keys, not even in ``/proc/self/environ``.

A stage also starts without the optional modules of ``LEFT_OUT`` that it does not name
(``needs``): a library that finds one missing goes on without it.
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

# Credentials a cloud run or a shell may hold; git and DVC use them, stages mostly do not.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GIT_TOKEN", "GIT_PASSWORD", "GITHUB_TOKEN", "GH_TOKEN",
              "GITLAB_TOKEN", "DVC_STUDIO_TOKEN", "TRAIN_STUDIO_TOKEN", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY",
              "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "WANDB_API_KEY")


# transformers imports scikit-learn whenever it is installed (lm-eval requires it), for assisted
# generation alone, which no stage uses; with the scipy and pandas it brings, that is 0.6 to 0.9 s
# of CPU as every stage starts, a fifth of a small model's stage. The benchmark stages name it:
# lm-eval's F1 and MCC metrics use it.
LEFT_OUT = ("sklearn",)


def leave_out(needs: tuple[str, ...] = ()) -> None:
    """Make the modules of ``LEFT_OUT`` not in ``needs`` unimportable in this process (None in
    ``sys.modules``: ``find_spec`` finds nothing, ``import`` raises ModuleNotFoundError)."""
    for name in LEFT_OUT:
        if name not in needs and name not in sys.modules:
            sys.modules[name] = None


def drop_secrets(keep: tuple[str, ...] = ()) -> None:
    """Start this process again without the credentials it does not use (see the module doc)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV or k in keep}
    if len(env) < len(os.environ):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def run(main: Callable[..., object], description: str | None = None,
        add_args: Callable[[argparse.ArgumentParser], None] | None = None,
        argv: list[str] | None = None, secrets: tuple[str, ...] = (), needs: tuple[str, ...] = ()) -> int:
    """Drop the credentials not in ``secrets`` and the modules of ``LEFT_OUT`` not in ``needs``
    (in a stage's own process: ``argv`` None), parse arguments, configure logging, load and
    validate params, call ``main(cfg, **args)``."""
    if argv is None:
        drop_secrets(secrets)
        leave_out(needs)
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

    def load_and_run() -> None:
        cfg: Params = load_params()
        log.debug("params: %s", cfg.model_dump_json())
        main(cfg, **args)

    return one_line_errors(load_and_run, debug)


def one_line_errors(call: Callable[[], object], debug: bool = False) -> int:
    """Exit code 0 after ``call()``; a PipelineError from it becomes one ``error:`` line on
    stderr and exit code 1 (``debug`` logs the traceback first)."""
    try:
        call()
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
