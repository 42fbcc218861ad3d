"""Run profiles: params overlays in ``profiles/*.yaml``, turned into ``dvc exp run -S`` options.

A profile is a nested mapping shaped like ``params.yaml`` (only the keys it changes), plus an
optional ``extends`` (another profile beside it, whose keys and imports it starts from) and an
optional ``max_cost_usd`` (the cloud job's budget in dollars: src/cloud/cost.py), and an optional
``imports`` section: raw files of Hugging Face Hub datasets, each at a commit, that
``--import`` brings in with ``dvc import-url`` when they are missing (DVC records the URL, so
the experiment records the revision)::

    python -m src.cloud.profile profiles/llama2-7b-qlora.yaml            # the -S options, shell-quoted
    python -m src.cloud.profile profiles/llama2-7b-qlora.yaml --null     # NUL-separated, for scripts
    python -m src.cloud.profile profiles/llama2-7b-qlora.yaml --import   # bring in its raw files
    python -m src.cloud.profile profiles/llama2-7b-qlora.yaml --budget   # its max_cost_usd, if any

``dvc exp run -S`` parses values with Hydra's override grammar, not YAML (``2e-4`` is a float to
Hydra and a string to PyYAML; ``yes`` is a string to Hydra). Each option is written so that DVC's
own parser gives the profile's value back, and the command checks exactly that, by applying the
options to a copy of ``params.yaml`` with DVC's code, before printing anything.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from src.benchmarking import check_task_names
from src.cli import one_line_errors
from src.config import PARAMS_FILE, validate_params, with_output_paths
from src.errors import PipelineError
from src.library_configs import check_align_types, check_library_types

log = logging.getLogger(__name__)

IMPORTS_KEY = "imports"
EXTENDS_KEY = "extends"
BUDGET_KEY = "max_cost_usd"
SHA = re.compile(r"[0-9a-f]{40}")
HUB = "https://huggingface.co"


def read_yaml(path: Path) -> dict:
    """A YAML file read the way DVC reads params.yaml (YAML 1.2: ``2e-4`` is a float)."""
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    try:
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, YAMLFileCorruptedError) as err:
        raise PipelineError(f"{path}: cannot be read ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: not a mapping of params sections")
    return _plain(data)


def _plain(value):
    """ruamel's commented containers as dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_profile(path: str | Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, dict]]:
    """(the params overlay, the imports by target path) of a profile file; one that ``extends``
    another (a file name beside it) is that one's overlay and imports with its own over them."""
    path = Path(path)
    overlay = read_yaml(path)
    base: tuple[dict, dict[str, dict]] = ({}, {})
    if EXTENDS_KEY in overlay:
        parent = overlay.pop(EXTENDS_KEY)
        if not isinstance(parent, str) or "/" in parent or not parent.endswith(".yaml"):
            raise PipelineError(f"{path}: {EXTENDS_KEY}: the file name of a profile beside it (a .yaml)")
        if path.resolve() in seen:
            raise PipelineError(f"{path}: {EXTENDS_KEY}: profiles extend each other in a loop")
        base = load_profile(path.parent / parent, (*seen, path.resolve()))
    _budget_value(path, overlay.pop(BUDGET_KEY, None))  # not a params key: checked, read by budget()
    imports = overlay.pop(IMPORTS_KEY, None) or {}
    if not isinstance(imports, dict):
        raise PipelineError(f"{path}: {IMPORTS_KEY}: a mapping of target path to {{dataset, revision, file}}")
    for target, spec in imports.items():
        if not isinstance(spec, dict) or set(spec) != {"dataset", "revision", "file"} or \
                not all(isinstance(v, str) and v for v in spec.values()):
            raise PipelineError(f"{path}: {IMPORTS_KEY}.{target}: needs dataset, revision and file (strings)")
        if not target.startswith("data/raw/") or ".." in target.split("/"):
            raise PipelineError(f"{path}: {IMPORTS_KEY}.{target}: raw files go under data/raw/")
    return merged(base[0], overlay), {**base[1], **imports}


def _budget_value(path: Path, value) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise PipelineError(f"{path}: {BUDGET_KEY}: a number of dollars above 0, not {value!r}")
    return value


def budget(path: str | Path) -> float | None:
    """The profile's ``max_cost_usd``, or that of the profile it extends; None when neither sets one."""
    path = Path(path)
    load_profile(path)  # the whole chain checked first
    data = read_yaml(path)
    if data.get(BUDGET_KEY) is not None:
        return float(data[BUDGET_KEY])
    return budget(path.parent / data[EXTENDS_KEY]) if EXTENDS_KEY in data else None


def merged(params: dict, overlay: dict) -> dict:
    """``params`` with the overlay's values in place (dicts merged key by key, the rest replaced)."""
    out = dict(params)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def leaves(overlay: dict, params: dict, prefix: str = "") -> list[tuple[str, object, bool]]:
    """(dotted key, value, whether params.yaml has the key) for each value the overlay sets."""
    found = []
    for key, value in overlay.items():
        dotted, present = f"{prefix}{key}", isinstance(params, dict) and key in params
        if isinstance(value, dict) and value and present and isinstance(params[key], dict):
            found += leaves(value, params[key], f"{dotted}.")
        else:
            found.append((dotted, value, present))
    return found


_BARE = re.compile(r"[A-Za-z_/][\w./:-]*")  # a string Hydra reads back as itself, unquoted


def hydra_value(value) -> str:
    """``value`` in Hydra's override grammar, so that Hydra parses it back to ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PipelineError(f"{value}: not a finite number")
        return repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in {"null", "true", "false", "nan", "inf"}:
            return value
        # Hydra keeps a backslash as it is unless backslashes precede a quote (or the closing one)
        doubled = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)
        return "'" + doubled.replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise PipelineError(f"{value!r}: a {type(value).__name__} has no -S form")


def options(profile: str | Path, repo: Path = Path(".")) -> list[str]:
    """``["-S", "key=value", ...]`` for the profile over ``repo``'s params.yaml, checked: the
    result validates against the schema and DVC's own parsing of the options gives it back."""
    overlay, _ = load_profile(profile)
    params = read_yaml(repo / PARAMS_FILE)
    expected = merged(params, overlay)
    try:
        cfg = validate_params(with_output_paths(expected, repo))
        check_library_types(cfg.train)
        check_align_types(cfg.align)
        check_task_names(cfg.benchmark, root=repo)  # a misspelt task fails here, not after training
    except PipelineError as err:
        raise PipelineError(f"{profile}: {err}") from err
    opts = []
    for key, value, present in leaves(overlay, params):
        opts += ["-S", f"{'' if present else '+'}{key}={hydra_value(value)}"]
    applied = as_dvc_applies(repo / PARAMS_FILE, opts[1::2])
    if applied != expected:
        wrong = [k for k, v, _ in leaves(overlay, params) if _get(applied, k) != v]
        raise PipelineError(f"{profile}: DVC would read {', '.join(wrong) or 'the options'} differently")
    return opts


def _get(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def as_dvc_applies(params_file: Path, overrides: list[str]) -> dict:
    """params.yaml after ``dvc exp run -S`` with ``overrides``, by DVC's own code, on a copy."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / PARAMS_FILE
        shutil.copy(params_file, copy)
        try:
            apply_overrides(copy, overrides)
        except Exception as err:  # DVC's InvalidArgumentError, chained to Hydra's reason
            reason = " ".join(str(err.__cause__ or err).split())
            raise PipelineError(f"{params_file}: -S options refused by DVC ({reason})") from err
        return read_yaml(copy)


# --- imports ------------------------------------------------------------------------------

def resolve_revision(dataset: str, revision: str) -> str:
    """The commit SHA of a dataset revision: itself when it is one, else asked of the Hub."""
    if SHA.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(dataset, revision=revision).sha
    except Exception as err:  # network, 404, offline mode: one line either way
        raise PipelineError(f"{dataset}@{revision}: cannot look up its commit ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]})") from err
    log.warning("%s@%s is commit %s; pin it in the profile (revision: %s) for the same data next time",
                dataset, revision, sha, sha)
    return sha


def dataset_url(dataset: str, sha: str, file: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", HUB).rstrip("/")
    return f"{endpoint}/datasets/{dataset}/resolve/{sha}/{file}"


def bring_in(profile: str | Path, repo: Path = Path(".")) -> list[str]:
    """``dvc import-url`` each of the profile's raw files that the repository lacks (neither the
    file nor its ``.dvc`` file); return the targets imported."""
    _, imports = load_profile(profile)
    done = []
    for target, spec in imports.items():
        if (repo / target).exists() or (repo / f"{target}.dvc").exists():
            log.info("%s: present, not imported again", target)
            continue
        url = dataset_url(spec["dataset"], resolve_revision(spec["dataset"], spec["revision"]), spec["file"])
        log.info("dvc import-url %s %s", url, target)
        proc = subprocess.run(["dvc", "import-url", url, target], cwd=repo, capture_output=True, text=True)
        if proc.returncode != 0:
            reason = " ".join((proc.stderr or proc.stdout).split())[-300:]
            raise PipelineError(f"{target}: dvc import-url {url} failed ({reason})")
        done.append(target)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", help="a profile file, e.g. profiles/llama2-7b-qlora.yaml")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--null", action="store_true", help="options separated by NUL bytes (for mapfile -d '')")
    mode.add_argument("--import", dest="bring_in", action="store_true",
                      help="dvc import-url the profile's raw files that are missing")
    mode.add_argument("--budget", action="store_true", help="print the profile's max_cost_usd (nothing if none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # this module's progress; the libraries' import chatter stays out
    if args.bring_in:
        return one_line_errors(lambda: bring_in(args.profile))
    if args.budget:
        return one_line_errors(lambda: print(budget(args.profile) or ""))
    if args.null:
        return one_line_errors(lambda: sys.stdout.write("".join(f"{o}\0" for o in options(args.profile))))
    return one_line_errors(lambda: print(shlex.join(options(args.profile))))


if __name__ == "__main__":
    raise SystemExit(main())
