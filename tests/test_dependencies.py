"""Each stage depends on exactly the code it runs: the ``src`` modules a stage imports, directly or
through other modules (imports inside functions included), are its ``dvc.yaml`` deps, and no
other ``src`` module is. Editing a module then reruns the stages that use it and no others; and no
stage imports another stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """The ``src`` modules (as files relative to the repository) that ``path`` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "src" or not name.startswith("src."):
                continue
            file = ROOT / (name.replace(".", "/") + ".py")
            if file.is_file():  # a module, not a name inside one (or a package)
                found.add(file.relative_to(ROOT).as_posix())
    return found


def closure(module: str) -> set[str]:
    """``module`` and every ``src`` module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imported_modules(ROOT / current) - seen
    return seen


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, a ``foreach`` stage by its ``do`` body."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: stage.get("do", stage) for name, stage in pipeline["stages"].items()}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_the_code_it_imports(name):
    stage = stages()[name]
    module = stage["cmd"].split(" -m ", 1)[1].split()[0]
    entry = module.replace(".", "/") + ".py"
    code_deps = {d for d in stage["deps"] if d.startswith("src/") and d.endswith(".py")}
    used = closure(entry)
    assert sorted(used - code_deps) == [], f"{name}: imports these src modules that dvc.yaml does not list"
    assert sorted(code_deps - used) == [], f"{name}: dvc.yaml lists these src modules that it never imports"
    other_stages = sorted(m for m in used if m.startswith("src/stages/") and m != entry)
    assert other_stages == [], f"{name}: imports another stage"
    for dep in stage["deps"]:  # the data files and folders of code (templates, accelerate configs) exist
        if dep.startswith("src/"):
            assert (ROOT / dep).exists(), f"{name}: {dep} does not exist"


def test_imports_are_found_in_every_form(tmp_path):
    """The check would be hollow if it missed an import: inside a function, ``from src import x``,
    ``import src.x``; names that are not modules are not counted."""
    code = tmp_path / "stage.py"
    code.write_text("import src.errors\nfrom src import modeling, stages\n"
                    "def main():\n    from src.records import read_jsonl\n    import json\n")
    assert imported_modules(code) == {"src/errors.py", "src/modeling.py", "src/records.py"}
    assert "src/fetching.py" not in closure("src/modeling.py")  # loading a model does not pull in fetching
