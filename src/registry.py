"""Releases of the merged model in GTO, DVC's Git-tag registry (the one DVC Studio reads).

    python -m src.registry register <experiment | git revision> [--version v1.0.0] [--push]
    gto assign chat-model --version v1.0.0 --stage prod [--push]
    python -m src.publish --stage prod                                  # the Hub gets that version
    sky serve up sky-serve.yaml --env MODEL_STAGE=prod ...              # and so does the endpoint
    python -m src.registry show                                         # versions, commits, stages

dvc.yaml declares the merged model as the artifact ``chat-model`` (its ``artifacts`` section),
so ``dvc artifacts get`` and DVC Studio find it. A version is the Git tag ``chat-model@v1.0.0``
on the commit of an experiment (``dvc exp show`` names them) or of a branch; a stage, the tag
``chat-model#prod#N`` that ``gto assign`` adds. ``register`` takes an experiment's name (or any
revision), checks that its commit records a merged model (``dvc.lock``) that passed the quality
gate (``--force`` registers one that did not), and lets GTO tag it with the next version unless
``--version`` names one. Tags are local until pushed (``--push``, or ``git push origin --tags``);
the experiment's outputs go with ``dvc exp push origin <name>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

import yaml

from src.cli import one_line_errors
from src.config import output_paths
from src.errors import PipelineError

log = logging.getLogger(__name__)

ARTIFACT = "chat-model"  # dvc.yaml's artifacts key for paths.merged_model
MERGE_STAGE = "merge_model"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def resolve(target: str) -> tuple[str, str | None]:
    """(commit, experiment name) of an experiment's name, or (commit, None) of a git revision."""
    refs = _git("for-each-ref", "--format=%(objectname) %(refname)", f"refs/exps/*/*/{target}").stdout.split("\n")
    found = [line.split() for line in refs if line.strip()]
    if len(found) > 1:
        raise PipelineError(f"{target}: {len(found)} experiments of that name (on different baselines): "
                            f"register one by its commit ({', '.join(sha[:7] for sha, _ in found)})")
    if found:
        return found[0][0], target
    proc = _git("rev-parse", "--verify", "--quiet", f"{target}^{{commit}}")
    if proc.returncode != 0:
        raise PipelineError(f"{target}: neither an experiment (dvc exp show) nor a git revision")
    return proc.stdout.strip(), None


def at_commit(commit: str, path: str) -> str | None:
    """A git-tracked file's text at ``commit``; None when it has none."""
    proc = _git("show", f"{commit}:{path}")
    return proc.stdout if proc.returncode == 0 else None


def check_releasable(commit: str, force: bool) -> None:
    """The commit's dvc.lock records a merged model, and its quality gate passed (or ``force``)."""
    paths = output_paths()
    lock = yaml.safe_load(at_commit(commit, "dvc.lock") or "{}") or {}
    outs = (lock.get("stages") or {}).get(MERGE_STAGE, {}).get("outs") or []
    if not any(out.get("path") == paths["merged_model"] for out in outs):
        raise PipelineError(f"{commit[:7]}: its dvc.lock records no {paths['merged_model']} ({MERGE_STAGE} never ran "
                            "there): register an experiment's commit")
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(".", rev=commit)  # the gate's file: in git or in the DVC cache, as the run left it
    if not fs.exists(paths["quality_gate"]):
        log.warning("%s: no quality gate recorded at %s", commit[:7], paths["quality_gate"])
        return
    gate = json.loads(fs.read_text(paths["quality_gate"]))
    if not gate.get("passed"):
        failed = [name for name, check in (gate.get("checks") or {}).items() if not check.get("passed")]
        message = f"{commit[:7]}: below the quality gate ({', '.join(failed) or 'failed'})"
        if not force:
            raise PipelineError(message + "; --force registers it anyway")
        log.warning("%s; registered anyway (--force)", message)


def register(target: str, version: str | None = None, push: bool = False, force: bool = False) -> str:
    """Tag the commit of ``target`` as a version of the model; returns the version."""
    from gto import api
    from gto.exceptions import GTOException

    commit, experiment = resolve(target)
    check_releasable(commit, force)
    try:
        tag = api.register(".", ARTIFACT, commit, version=version, push=push,
                           message=f"{ARTIFACT}: experiment {experiment}" if experiment else None)
    except GTOException as err:
        raise PipelineError(f"gto register {ARTIFACT} {commit[:7]}: {' '.join(str(err).split())}") from err
    registered = tag.version
    print(f"{ARTIFACT} {registered} on {commit[:7]}" + (f" (experiment {experiment})" if experiment else ""))
    return registered


def in_stage(stage: str) -> tuple[str, str]:
    """(version, commit) of the model in ``stage``, as GTO reads the tags."""
    from gto import api

    found = api.find_versions_in_stage(".", ARTIFACT, stage)
    if not found:
        raise PipelineError(f"no version of {ARTIFACT} is in stage {stage} (gto show; "
                            f"gto assign {ARTIFACT} --version vX.Y.Z --stage {stage})")
    latest = found[0] if isinstance(found, list) else found
    return latest.version, latest.commit_hexsha


def show() -> None:
    """Each version: its commit, when it was registered and the stages it holds."""
    from gto import api

    rows, _ = api.show(".", ARTIFACT, table=True)
    if not rows:
        print(f"no version of {ARTIFACT} registered (python -m src.registry register <experiment>)")
    for row in rows:
        commit = _git("rev-list", "-n", "1", row["ref"]).stdout.strip()
        print(f"{row['version']:<10} {commit[:7]}  {row['created_at']:%Y-%m-%d %H:%M}  {row['stage'] or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("register", help="a version of the model on an experiment's commit")
    p.add_argument("target", help="an experiment's name (dvc exp show) or a git revision")
    p.add_argument("--version", help="e.g. v1.0.0; default: GTO's next version")
    p.add_argument("--push", action="store_true", help="push the tag to origin")
    p.add_argument("--force", action="store_true", help="register a model below the quality gate")
    sub.add_parser("show", help="the model's versions and stages")
    p = sub.add_parser("which", help="print the version and commit in a stage")
    p.add_argument("stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "register":
        return one_line_errors(lambda: register(args.target, args.version, args.push, args.force))
    if args.command == "which":
        return one_line_errors(lambda: print(*in_stage(args.stage)))
    return one_line_errors(show)


if __name__ == "__main__":
    sys.exit(main())
