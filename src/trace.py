"""Where a shipped model came from, and whether it still matches what made it.

    python -m src.trace models/export/model-q8_0.gguf
    python -m src.trace models/merged
    python -m src.trace northwind/juniper-135m[@revision]     # a Hub repository python -m src.publish wrote

Prints the lineage the file or folder carries (src/lineage.py); for a GGUF file, whether its
tensor data still match the digest written at export (a file whose weights changed after export
is reported, and the command exits 1); for a Hub repository, the lineage its upload carries
(``lineage.json``, read with the ``HF_TOKEN`` of the environment for a private one). Inside a
clone of the repository (run it there), also:

* the commits whose ``dvc.lock`` records the same md5 for every data file training read and
  whose ``params.yaml`` gives the same digest for every params section: the branches' history
  and the experiments DVC keeps under ``refs/exps`` (named as ``dvc exp show`` names them);
* each input that changed since, one line each: a data file of the workspace whose md5 is not
  the recorded one, a params section of the workspace's ``params.yaml`` whose digest is not,
  and a data file that neither the workspace nor the DVC cache holds (and whether the default
  DVC remote does).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from src.cli import one_line_errors
from src.errors import PipelineError
from src.lineage import LINEAGE_FILE, LINEAGE_KEY, file_md5, flat, params_digest

log = logging.getLogger(__name__)

MAX_COMMITS = 500  # the newest commits of all refs searched for the run that made a file


def read_lineage(path: Path) -> tuple[dict, list[str], bool]:
    """(the lineage a GGUF file or a model folder carries, lines about its weights, whether the
    weights match)."""
    if path.is_dir():
        if not (path / LINEAGE_FILE).is_file():
            raise PipelineError(f"{path}: no {LINEAGE_FILE} (a folder merge_model wrote carries one)")
        return json.loads((path / LINEAGE_FILE).read_text(encoding="utf-8")), [], True
    from src.gguf_lineage import TENSOR_DIGEST_KEY, metadata_and_digest

    meta, actual = metadata_and_digest(path)
    if LINEAGE_KEY not in meta:
        raise PipelineError(f"{path}: no {LINEAGE_KEY} in its metadata (not exported by this pipeline, or before "
                            "it wrote lineage)")
    lineage = json.loads(meta[LINEAGE_KEY])
    recorded = meta.get(TENSOR_DIGEST_KEY)
    if recorded == actual:
        return lineage, [f"weights: tensor data sha256 {actual}, as written at export"], True
    return lineage, [f"weights: changed after export: tensor data sha256 {actual}, written at export {recorded}"], False


HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")  # owner/name[@revision]


def hub_lineage(spec: str) -> tuple[dict, list[str], bool]:
    """The lineage a Hub repository's upload carries (its ``lineage.json``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        path = hf_hub_download(repo_id, LINEAGE_FILE, revision=revision or None)
    except EntryNotFoundError as err:
        raise PipelineError(f"{spec}: no {LINEAGE_FILE} in the repository (not uploaded by src.publish)") from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise PipelineError(f"{spec}: no such repository or revision on the Hub (a private one needs HF_TOKEN)") \
            from err
    except Exception as err:  # offline, no connection: one line
        raise PipelineError(f"{spec}: cannot read from the Hub ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]})") from err
    lineage = json.loads(Path(path).read_text(encoding="utf-8"))
    return lineage, ["weights: not checked here (download a GGUF file and trace it for its tensor digest)"], True


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def _yaml(text: str, name: str) -> dict | None:
    """A YAML file read as DVC reads params.yaml and dvc.lock (YAML 1.2: ``2e-4`` is a float)."""
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    try:
        data = parse_yaml(text, name)
    except YAMLFileCorruptedError:
        return None
    return data if isinstance(data, dict) else None


def _at(rev: str, file: str) -> dict | None:
    shown = _git("show", f"{rev}:{file}")
    return _yaml(shown.stdout, f"{rev}:{file}") if shown.returncode == 0 else None


def recorded_data(lock: dict) -> dict[str, str]:
    """``{path: md5}`` of every dependency a dvc.lock records."""
    return {dep["path"]: dep.get("md5") for stage in (lock.get("stages") or {}).values()
            for dep in stage.get("deps", []) if isinstance(dep, dict) and "path" in dep}


def params_digests(raw: dict, sections) -> dict[str, str] | None:
    """The digest of each of ``sections`` of a params mapping, validated as the stages validate
    it; None when it does not validate."""
    from src.config import validate_params, with_output_paths

    try:
        cfg = validate_params(with_output_paths(raw))
    except PipelineError:  # another schema's params (an old commit): not the run
        return None
    return {s: params_digest(getattr(cfg, s).model_dump(mode="json")) for s in sections if hasattr(cfg, s)}


def matching_commits(lineage: dict) -> list[str]:
    """Lines naming each commit (and experiment) whose dvc.lock and params.yaml give the lineage's
    data md5s and params digests."""
    revs = _git("rev-list", "--all", f"--max-count={MAX_COMMITS}").stdout.split()
    names: dict[str, list[str]] = {}
    for line in _git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps", "refs/heads",
                     "refs/tags").stdout.splitlines():
        sha, ref = line.split(" ", 1)
        short = ref.rsplit("/", 1)[-1] if ref.startswith("refs/exps/") else \
            ref.removeprefix("refs/heads/").removeprefix("refs/tags/")  # an experiment by its name, as dvc exp show
        names.setdefault(sha, []).append(short)
    found = []
    for rev in revs:
        lock = _at(rev, "dvc.lock")
        if not lock:
            continue
        data = recorded_data(lock)
        if any(data.get(path) != md5 for path, md5 in lineage.get("data", {}).items()):
            continue
        digests = params_digests(_at(rev, "params.yaml") or {}, lineage.get("params", {}))
        if digests != lineage.get("params", {}):
            continue
        label = f" ({', '.join(names[rev])})" if rev in names else ""
        found.append(f"made by commit {rev}{label}")
    return found or ["made by: no commit of this repository records these data md5s and params "
                     f"(searched the newest {MAX_COMMITS} of every branch and experiment)"]


def in_remote(md5: str) -> str:
    """Whether the default DVC remote holds the file of this md5, in words."""
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            name = repo.config["core"].get("remote")
            if not name:
                return "no DVC remote is set to fetch it from"
            found = repo.cloud.get_remote_odb(name, "status").exists(md5)
    except Exception as err:  # a remote out of reach: say so, it is a report
        return f"the DVC remote cannot be asked ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    return f"the DVC remote {name} holds it (dvc pull)" if found else f"nor does the DVC remote {name}: it is lost"


def changed_inputs(lineage: dict) -> list[str]:
    """One line per input of the workspace that is not what the lineage records."""
    lines = []
    for path, md5 in lineage.get("data", {}).items():
        file = Path(path)
        cached = Path(".dvc/cache/files/md5") / md5[:2] / md5[2:]
        if file.is_file():
            now = file_md5(file)
            if now != md5:
                lines.append(f"changed since: {path} (md5 {now} now, {md5} recorded)")
        elif not cached.is_file():
            lines.append(f"missing: {path} (md5 {md5}) is neither in the workspace nor in the DVC cache; "
                         + in_remote(md5))
    if Path("params.yaml").is_file():
        current = params_digests(_yaml(Path("params.yaml").read_text(encoding="utf-8"), "params.yaml") or {},
                                 lineage.get("params", {})) or {}
        for section, digest in lineage.get("params", {}).items():
            if current.get(section) != digest:
                lines.append(f"changed since: params {section} (params.yaml gives another digest)")
    return lines


def trace(path: Path, lineage_only: bool = False) -> tuple[list[str], bool]:
    """The report's lines, and whether the weights match; ``lineage_only``: not the repository's
    commits and inputs."""
    if path.exists():
        lineage, weights, ok = read_lineage(path)
    elif HUB_REPO.fullmatch(str(path)):
        lineage, weights, ok = hub_lineage(str(path))
    else:
        raise PipelineError(f"{path}: no such file or folder (nor a Hub repository id, owner/name)")
    lines = [f"{path}:", *weights, *(f"{key}: {value}" for key, value in flat(lineage).items())]
    if not lineage_only and Path("dvc.yaml").is_file() and _git("rev-parse", "--git-dir").returncode == 0:
        lines += matching_commits(lineage)
        lines += changed_inputs(lineage) or ["inputs: the workspace's data and params are the recorded ones"]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a GGUF file, a merged model folder or a Hub repository id")
    parser.add_argument("--lineage-only", action="store_true", help="not the commits and inputs of this clone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = {}

    def report() -> None:
        lines, result["ok"] = trace(args.path, args.lineage_only)
        print("\n".join(lines))

    code = one_line_errors(report)
    return code or (0 if result.get("ok") else 1)


if __name__ == "__main__":
    sys.exit(main())
