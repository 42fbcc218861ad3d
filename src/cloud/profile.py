"""The GPU profile: the ``-S key=value`` options that sky-training.yaml's ``PARAMS`` passes to
``dvc exp run``, read from the YAML so that there is one copy of them."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def gpu_profile_overrides(task: Path = ROOT / "sky-training.yaml") -> list[tuple[str, object]]:
    """``(dotted key, value)`` for each ``-S`` option in the task's ``PARAMS``, values parsed as
    YAML (the way ``dvc exp run -S`` parses them)."""
    options = yaml.safe_load(task.read_text())["envs"]["PARAMS"].split()
    if options[::2] != ["-S"] * (len(options) // 2) or len(options) % 2:
        raise ValueError(f"{task}: envs.PARAMS must be a list of -S key=value options")
    return [(key, yaml.safe_load(value)) for key, value in (o.split("=", 1) for o in options[1::2])]


def apply_overrides(params: dict, overrides: list[tuple[str, object]]) -> dict:
    """Set each dotted key in the params mapping (in place, and returned); an unknown key fails."""
    for key, value in overrides:
        *parents, leaf = key.split(".")
        section = params
        for part in parents:
            section = section[part]
        if leaf not in section:
            raise KeyError(f"{key}: not a key of params.yaml")
        section[leaf] = value
    return params
