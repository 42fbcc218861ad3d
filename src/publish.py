"""Upload the merged model to the Hugging Face Hub: ``python -m src.publish``.

Opt-in, never a stage: it uploads ``models/merged`` (weights, tokenizer with the chat
template training used, generation config and the model card) to the repository that
``publish.repo_id`` names (or ``--repo-id``), creating it private unless
``publish.private`` is false, on branch ``publish.revision``. The token comes from the
environment only (``HF_TOKEN``); it is sent in the request header and written nowhere.
Prints the commit URL.

    HF_TOKEN=hf_... python -m src.publish --repo-id me/juniper-135m
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from src.cli import run
from src.config import Params
from src.errors import PipelineError

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"


def publish(folder: str | Path, repo_id: str, private: bool, revision: str, token: str, message: str) -> str:
    """Create the repository if needed, upload ``folder`` as one commit; return the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=message, repo_type="model")
    except HfHubHTTPError as err:
        reason = " ".join(str(err).replace(token, "<HF_TOKEN>").split())
        raise PipelineError(f"{repo_id}: upload failed ({reason})") from err
    return info.commit_url


def main(cfg: Params, repo_id: str | None = None) -> str:
    p = cfg.publish
    repo_id = repo_id or p.repo_id
    if not repo_id:
        raise PipelineError("params.yaml: publish.repo_id is null; name the Hub repository (or --repo-id)")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise PipelineError(f"{TOKEN_ENV} is not set: a Hub token with write access, from the environment only")
    folder = Path(cfg.paths.merged_model)
    if not (folder / "README.md").is_file():
        raise PipelineError(f"{folder}: no merged model with its card here (run dvc exp run first)")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    log.info("uploading %s (%s) to %s, %s, branch %s", folder, ", ".join(files), repo_id,
             "private" if p.private else "public", p.revision)
    url = publish(folder, repo_id, p.private, p.revision, token,
                  f"{cfg.generate_identity_data.name}: {cfg.fetch_base_model.model} fine-tuned with LoRA")
    print(url)
    return url


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", help="the Hub repository (owner/name); default: publish.repo_id in params")


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, _args, secrets=(TOKEN_ENV,)))
