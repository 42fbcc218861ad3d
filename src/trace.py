"""Where a shipped model came from, and whether it still matches what made it.

    python -m src.trace models/export/model-q8_0.gguf
    python -m src.trace models/merged

Prints the lineage the file or folder carries (src/lineage.py); for a GGUF file, whether its
tensor data still match the digest written at export (a file whose weights changed after export
is reported, and the command exits 1). Inside a clone of the repository (run it there), also:

* the commits whose ``dvc.lock`` records the same md5 for every data file training read and
  whose ``params.yaml`` gives the same digest for every params section: the branches' history
  and the experiments DVC keeps under ``refs/exps`` (named as ``dvc exp show`` names them);
* each input that changed since, one line each: a data file of the workspace whose md5 is not
  the recorded one, a params section of the workspace's ``params.yaml`` whose digest is not,
  and a data file that neither the workspace nor the DVC cache holds.
"""

from __future__ import annotations

import argparse
import json
import logging
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
            lines.append(f"missing: {path} (md5 {md5}) is neither in the workspace nor in the DVC cache (dvc pull)")
    if Path("params.yaml").is_file():
        current = params_digests(_yaml(Path("params.yaml").read_text(encoding="utf-8"), "params.yaml") or {},
                                 lineage.get("params", {})) or {}
        for section, digest in lineage.get("params", {}).items():
            if current.get(section) != digest:
                lines.append(f"changed since: params {section} (params.yaml gives another digest)")
    return lines


def trace(path: Path) -> tuple[list[str], bool]:
    """The report's lines, and whether the weights match."""
    if not path.exists():
        raise PipelineError(f"{path}: no such file or folder")
    lineage, weights, ok = read_lineage(path)
    lines = [f"{path}:", *weights, *(f"{key}: {value}" for key, value in flat(lineage).items())]
    if Path("dvc.yaml").is_file() and _git("rev-parse", "--git-dir").returncode == 0:  # inside a clone
        lines += matching_commits(lineage)
        lines += changed_inputs(lineage) or ["inputs: the workspace's data and params are the recorded ones"]
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a GGUF file or a merged model folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = {}

    def report() -> None:
        lines, result["ok"] = trace(args.path)
        print("\n".join(lines))

    code = one_line_errors(report)
    return code or (0 if result.get("ok") else 1)


if __name__ == "__main__":
    sys.exit(main())
