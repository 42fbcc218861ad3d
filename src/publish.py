"""Upload the merged model to the Hugging Face Hub: ``python -m src.publish``.

Opt-in, never a stage: it uploads ``models/merged`` (weights, tokenizer with the chat
template training used, generation config and the model card), and the GGUF files and Ollama
Modelfile of ``models/export`` when export_model wrote them, in one commit to the repository that
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


def publish(files: list[Path], repo_id: str, private: bool, revision: str, token: str, message: str) -> str:
    """Create the repository if needed, upload ``files`` (at its top level) as one commit; return
    the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")
    except HfHubHTTPError as err:
        reason = " ".join(str(err).replace(token, "<HF_TOKEN>").split())
        raise PipelineError(f"{repo_id}: upload failed ({reason})") from err
    return info.commit_url


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


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
    files = files_of(folder) + files_of(Path(cfg.paths.export))  # the GGUF files and Modelfile, if any
    log.info("uploading %s to %s, %s, branch %s", ", ".join(str(f) for f in files), repo_id,
             "private" if p.private else "public", p.revision)
    url = publish(files, repo_id, p.private, p.revision, token,
                  f"{cfg.generate_identity_data.name}: {cfg.fetch_base_model.model} fine-tuned with LoRA")
    print(url)
    return url


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", help="the Hub repository (owner/name); default: publish.repo_id in params")


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, _args, secrets=(TOKEN_ENV,)))
