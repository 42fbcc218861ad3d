"""Upload the merged model to the Hugging Face Hub: ``python -m src.publish``.

Opt-in, never a stage: it uploads ``models/merged`` (weights, tokenizer with the chat
template training used, generation config and the model card), and the GGUF files and Ollama
Modelfile of ``models/export`` when export_model wrote them, in one commit to the repository that
``publish.repo_id`` names (or ``--repo-id``), creating it private unless
``publish.private`` is false, on branch ``publish.revision``. The token comes from the
environment only (``HF_TOKEN``); it is sent in the request header and written nowhere.
Prints the commit URL.

Only the current experiment goes: each folder must be what ``dvc.lock`` records (and the GGUF
files made from that merged model), or the command refuses, naming the folder. The commit also
writes ``publish.json``, the list of files it uploaded and the DVC hashes of the folders; the next
upload removes the files that list names and the new experiment no longer has. Files this command
never wrote stay; ``README.md`` is the model card, replaced by each upload.

    HF_TOKEN=hf_... python -m src.publish --repo-id me/juniper-135m
    HF_TOKEN=hf_... python -m src.publish --stage prod    # the registered version in stage prod

With ``--stage`` it uploads the version of the model that GTO's tags put in that stage
(src/registry.py) instead: the merged folder, export and results its commit records, fetched
from the DVC cache or remote, whatever the workspace holds; the commit message names the
version, the stage and the commit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from src.cli import run
from src.config import Params
from src.errors import PipelineError
from src.files import read_json
from src.lineage import LINEAGE_FILE, flat

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
MANIFEST = "publish.json"  # in the Hub repository: what the last upload wrote, and from which run
KEPT = {".gitattributes", MANIFEST}  # never removed as an earlier upload's file


@dataclass(frozen=True)
class Upload:
    """What one commit carries: file name in the repository -> local file, and the DVC hash that
    dvc.lock records for each folder they come from."""

    files: dict[str, Path]
    outputs: dict[str, str]

    def manifest(self) -> bytes:
        """``publish.json``: the files this upload writes and the DVC hashes of their folders."""
        return (json.dumps({"files": sorted(self.files), "outputs": self.outputs}, indent=2) + "\n").encode()


def publish(upload: Upload, repo_id: str, private: bool, revision: str, token: str, message: str,
            description: str = "", card: str | None = None) -> str:
    """Create the repository if needed, commit ``upload`` (at its top level) with its manifest,
    ``card`` as its README.md when given, ``message`` and ``description``, removing what the last
    upload wrote and this one lacks; return the commit URL."""
    from httpx import TransportError
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=card.encode("utf-8")
                                     if name == "README.md" and card is not None else str(path))
                  for name, path in sorted(upload.files.items())]
    operations.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=upload.manifest()))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        gone = sorted(earlier_files(api, repo_id, revision) - set(upload.files) - KEPT)
        if gone:
            log.info("removing %s (an earlier upload's; this experiment has none) from %s", ", ".join(gone), repo_id)
        operations += [CommitOperationDelete(path_in_repo=name) for name in gone]
        info = api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                 revision=revision, repo_type="model")
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        raise PipelineError(f"{repo_id}: upload failed ({one_line(err, token)})") from err
    except (TransportError, OfflineModeIsEnabled) as err:
        raise PipelineError(f"{repo_id}: cannot reach the Hub at {constants.ENDPOINT} "
                            f"({one_line(err, token) or type(err).__name__})") from err
    return info.commit_url


def earlier_files(api, repo_id: str, revision: str) -> set[str]:
    """The files the last upload to ``revision`` wrote (its manifest) that are still there; none
    when no upload of this command wrote the branch."""
    import tempfile

    present = set(api.list_repo_files(repo_id, revision=revision))
    if MANIFEST not in present:
        return set()
    with tempfile.TemporaryDirectory() as tmp:
        path = api.hf_hub_download(repo_id, MANIFEST, revision=revision, local_dir=tmp)
        try:
            listed = json.loads(Path(path).read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError) as err:
            raise PipelineError(f"{repo_id}: its {MANIFEST} lists no files ({err}); fix or delete it on the Hub, "
                                "then publish again") from err
    return present & set(listed)


def one_line(err: Exception, token: str) -> str:
    """An error's message on one line, the token masked."""
    return " ".join(str(err).replace(token, "<HF_TOKEN>").split())


def check_repo_id(repo_id: str, where: str) -> str:
    """``repo_id`` if the Hub would take it as owner/name; else one line naming ``where`` it came from."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PipelineError(f"{where}: '{repo_id}' is not a Hub repository id ({' '.join(str(err).split())})") \
            from err
    if "/" not in repo_id:
        raise PipelineError(f"{where}: '{repo_id}' names no owner; give owner/name (your user or organisation)")
    return repo_id


def current_outputs(merged: Path, export: Path) -> dict[str, str]:
    """The DVC hash dvc.lock records for ``merged`` and, when it exists, ``export``, after checking
    each is that recorded output and that ``export`` was made from this ``merged``."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            outs = [recorded_output(repo, merged)]
            if export.exists():
                outs.append(recorded_output(repo, export))
                check_made_from(outs[1], outs[0])
            return {str(out): out.hash_info.value for out in outs}
    except DvcException as err:
        raise PipelineError(f"cannot read what dvc.lock records ({' '.join(str(err).split())})") from err


def check_made_from(export, merged) -> None:
    """The DVC output ``export`` was made from the workspace's ``merged``, as its stage's lock
    entry records it; else one line saying what to run."""
    made_from = [dep for dep in export.stage.deps if dep.fs_path == merged.fs_path]
    if not made_from or made_from[0].workspace_status():
        raise PipelineError(f"{export}: made from another {merged} than this one (an earlier run); run dvc repro "
                            f"{export.stage.addressing}, or remove {export} to publish without it")


def recorded_output(repo, folder: Path):
    """The DVC output at ``folder``, if the workspace's copy is the one dvc.lock records."""
    (out,) = repo.find_outs_by_path(str(folder))
    stage = out.stage.addressing
    if not out.hash_info:
        raise PipelineError(f"{folder}: dvc.lock records no run of {stage}, so this folder is no experiment's "
                            f"output; run dvc exp run (or dvc commit {stage} to record it as it is)")
    status = out.workspace_status()
    if status:
        raise PipelineError(f"{folder}: not what dvc.lock records for {stage} ({status[str(out)]} since the run); "
                            f"run dvc checkout {folder} to publish the recorded run, or dvc commit {stage} to "
                            "record this one")
    return out


def files_of(folder: Path) -> dict[str, Path]:
    """The files at the top of ``folder`` by name; none when there is no such folder."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def card_title(card: Path) -> str:
    """The model card's first heading (the base model and method), for the commit message."""
    lines = card.read_text(encoding="utf-8").splitlines()
    return next((line[2:].strip() for line in lines if line.startswith("# ")), "fine-tuned model")


def hub_card(card: str, evaluation: dict | None, gate: dict | None) -> str:
    """The card as uploaded: the merged folder's, then the run's evaluation and quality gate as
    tables (they come after the merge, so the folder's own card cannot hold them)."""
    parts: list[str] = []
    if evaluation and isinstance(evaluation.get("base"), dict) and isinstance(evaluation.get("finetuned"), dict):
        base, tuned = evaluation["base"], evaluation["finetuned"]
        rows = [f"| {k} | {base[k]} | {tuned[k]} |" for k in tuned if k in base]
        parts += ["## Evaluation", "",
                  "Greedy answers to held-out questions with no system message (the `evaluate` stage: "
                  "`sanity_check_result/evaluation.json`).", "",
                  "| metric | base | fine-tuned |", "|---|---|---|", *rows, ""]
        if "retention" in evaluation:
            parts += [f"Retention: {evaluation['retention']} of the {evaluation.get('probes_base_knows')} probes "
                      "the base answers right are still answered right.", ""]
    if gate and isinstance(gate.get("checks"), dict):
        rows = [f"| {name} | {c.get('value')} | {c.get('threshold')} | {'yes' if c.get('passed') else 'no'} |"
                for name, c in gate["checks"].items()]
        parts += ["## Quality gate", "", f"{'Passed' if gate.get('passed') else 'Failed'} "
                  "(the thresholds of `quality_gate` in params.yaml).", "",
                  "| check | value | threshold | passed |", "|---|---|---|---|", *rows, ""]
    return card.rstrip("\n") + "\n\n" + "\n".join(parts) if parts else card


def commit_description(merged: Path, gate: dict | None, release: str | None = None) -> str:
    """The upload commit's description: the registered version (``release``) or the git commit
    the workspace is at (and whether its params.yaml and dvc.lock differ from it, as after
    ``dvc exp apply``), the gate's verdict and the merged model's lineage (src/lineage.py)."""
    import subprocess

    lines = [release] if release else []
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and not release:
        changed = subprocess.run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"],
                                 capture_output=True, text=True).stdout.strip()
        lines.append(f"Built at git commit {head.stdout.strip()}" +
                     (" (params.yaml and dvc.lock changed since: an experiment applied, not committed)"
                      if changed else ""))
    if gate is not None:
        lines.append(f"Quality gate: {'passed' if gate.get('passed') else 'failed'}")
    if (merged / LINEAGE_FILE).is_file():
        lines += ["", "Lineage:", *(f"{k}: {v}" for k, v in flat(read_json(merged / LINEAGE_FILE)).items())]
    return "\n".join(lines)


def recorded_at(commit: str, merged: Path, export: Path) -> dict[str, str]:
    """The DVC hashes the commit's dvc.lock records for ``merged`` and, when export_model ran
    there from that merged model, ``export``."""
    import yaml

    from src.registry import at_commit

    stages = (yaml.safe_load(at_commit(commit, "dvc.lock") or "{}") or {}).get("stages") or {}

    def hashes(stage: str, kind: str) -> dict[str, str]:
        return {str(e["path"]): str(e.get("md5")) for e in (stages.get(stage) or {}).get(kind) or []}

    outputs = {str(merged): hashes("merge_model", "outs").get(str(merged))}
    if outputs[str(merged)] is None:
        raise PipelineError(f"{commit[:7]}: its dvc.lock records no {merged}")
    if str(export) in hashes("export_model", "outs"):
        if hashes("export_model", "deps").get(str(merged)) != outputs[str(merged)]:
            raise PipelineError(f"{commit[:7]}: its {export} was made from another {merged} (an earlier run)")
        outputs[str(export)] = hashes("export_model", "outs")[str(export)]
    return outputs


def fetch_at(commit: str, paths: list[Path], dest: Path, required: Path) -> None:
    """Each of ``paths`` as the commit records it (DVC outputs from the cache or the remote),
    under ``dest``. One the commit lacks, or whose data neither holds, is left out, but for
    ``required``: that is one line."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(".", rev=commit)
    for path in paths:
        try:
            if fs.exists(path.as_posix()):
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                fs.get(path.as_posix(), str(dest / path), recursive=fs.isdir(path.as_posix()))
                continue
            reason = "not recorded there"
        except (OSError, ValueError) as err:  # not in the cache and not in (or no) remote
            reason = " ".join(str(err).split())[:200]
        if path == required:
            raise PipelineError(f"{path} at {commit[:7]}: cannot be fetched ({reason}); dvc exp pull or dvc fetch "
                                "the experiment first")
        log.warning("%s at %s: left out (%s)", path, commit[:7], reason)


def main(cfg: Params, repo_id: str | None = None, stage: str | None = None) -> str:
    p = cfg.publish
    if not (repo_id or p.repo_id):
        raise PipelineError("params.yaml: publish.repo_id is null; name the Hub repository (or --repo-id)")
    repo_id = check_repo_id(repo_id or p.repo_id, "--repo-id" if repo_id else "params.yaml: publish.repo_id")
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise PipelineError(f"{TOKEN_ENV} is not set: a Hub token with write access, from the environment only")
    merged, export = Path(cfg.paths.merged_model), Path(cfg.paths.export)
    results = {"evaluation": Path(cfg.paths.evaluation), "gate": Path(cfg.paths.quality_gate)}
    if stage is None:
        if not (merged / "README.md").is_file():
            raise PipelineError(f"{merged}: no merged model with its card here (run dvc exp run first)")
        return upload_release(cfg, repo_id, token, Path("."), merged, export, results,
                              current_outputs(merged, export), None)
    from src.registry import ARTIFACT, in_stage

    version, commit = in_stage(stage)
    outputs = recorded_at(commit, merged, export)
    log.info("%s %s is in stage %s: commit %s", ARTIFACT, version, stage, commit[:7])
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        kept = [merged, *([export] if str(export) in outputs else []), *results.values()]
        fetch_at(commit, kept, Path(tmp), required=merged)
        release = f"Release: {ARTIFACT} {version} (stage {stage}), git commit {commit}"
        return upload_release(cfg, repo_id, token, Path(tmp), merged, export, results, outputs, release)


def upload_release(cfg: Params, repo_id: str, token: str, root: Path, merged: Path, export: Path,
                   results: dict[str, Path], outputs: dict[str, str], release: str | None) -> str:
    """Upload the merged folder, and the export when ``outputs`` names it, as they lie under
    ``root`` (the workspace, or a registered version fetched elsewhere)."""
    p = cfg.publish
    upload = Upload({**files_of(root / merged), **(files_of(root / export) if str(export) in outputs else {})},
                    outputs)  # the GGUF files and Modelfile, if any
    log.info("uploading %s to %s, %s, branch %s", ", ".join(str(f) for f in upload.files.values()), repo_id,
             "private" if p.private else "public", p.revision)
    found = {name: read_json(root / path) if (root / path).is_file() else None for name, path in results.items()}
    card = hub_card((root / merged / "README.md").read_text(encoding="utf-8"), found["evaluation"], found["gate"])
    description = commit_description(root / merged, found["gate"], release)
    url = publish(upload, repo_id, p.private, p.revision, token,
                  f"{cfg.generate_identity_data.name}: {card_title(root / merged / 'README.md')}", description, card)
    print(url)
    return url


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", help="the Hub repository (owner/name); default: publish.repo_id in params")
    parser.add_argument("--stage", help="the version of the model in this registry stage (src/registry.py), "
                                        "not the workspace's")


if __name__ == "__main__":
    raise SystemExit(run(main, __doc__, _args, secrets=(TOKEN_ENV,)))
