"""Each stage depends on exactly the code it runs: the ``src`` modules a stage imports, directly or
through other modules (imports inside functions included), are its ``dvc.yaml`` deps, and no
other ``src`` module is. Editing a module then reruns the stages that use it and no others; and no
stage imports another stage, nor does any other module (what stages share lives outside src/stages/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def import_names(node: ast.AST) -> set[str]:
    """The dotted names an import statement imports: ``import a.b`` gives ``a.b``; ``from a import
    b`` gives ``a`` and ``a.b``; any other node, none."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return set()


def imported_names(path: Path) -> set[str]:
    """The dotted names that ``path`` imports anywhere (inside functions too)."""
    return {name for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) for name in import_names(node)}


def names_imported_in_strings(path: Path) -> set[str]:
    """The dotted names imported by the import lines of ``path``'s strings: Python code that it runs
    in another process (a script given to ``python -c``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for line in node.value.splitlines():
                if line.lstrip().startswith(("from ", "import ")):
                    try:
                        found |= import_names(ast.parse(line.strip()).body[0])
                    except SyntaxError:  # prose that starts with the word
                        continue
    return found


def imported_modules(path: Path) -> set[str]:
    """The ``src`` modules (as files relative to the repository) that ``path`` imports anywhere."""
    found = set()
    for name in imported_names(path):
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


def stage_imports(path: Path) -> list[str]:
    """The stage modules that ``path`` imports anywhere, or ``src.stages`` when it imports the
    package itself (``from src import stages``), the code it runs from a string included."""
    names = {".".join(n.split(".")[:3]) for n in imported_names(path) | names_imported_in_strings(path)
             if n.split(".")[:2] == ["src", "stages"]}
    return sorted(names - {"src.stages"} or names)


def test_no_module_outside_the_stages_imports_one():
    """A stage is an entry point: code that a library module, a bench script or another stage
    needs lives in a module of src/ outside src/stages/, which the stages import."""
    modules = [p for folder in ("src", "bench") for p in sorted((ROOT / folder).rglob("*.py"))
               if not p.relative_to(ROOT).as_posix().startswith("src/stages/")]
    found = {p.relative_to(ROOT).as_posix(): stage_imports(p) for p in modules}
    offenders = {path: names for path, names in found.items() if names}
    assert offenders == {}, "these modules import a stage; move what they use out of src/stages/: " + "; ".join(
        f"{path} imports {', '.join(names)}" for path, names in offenders.items())


def test_stage_imports_are_found_in_every_form(tmp_path):
    """In every form, inside functions and in a script held in a string too; a stage named in a
    string (a launch command) is no import."""
    code = tmp_path / "bench.py"
    code.write_text("import src.stages.evaluate\nfrom src import stages\nCOMMAND = ['-m', 'src.stages.train']\n"
                    "def run():\n    from src.stages.train import main\n    from src.stages import merge_model\n")
    assert stage_imports(code) == ["src.stages.evaluate", "src.stages.merge_model", "src.stages.train"]
    code.write_text("def run():\n    from src import stages\n")
    assert stage_imports(code) == ["src.stages"]
    code.write_text('SCRIPT = """\nimport json\nfrom src.stages import process_data\nprint(1)\n"""\n')
    assert stage_imports(code) == ["src.stages.process_data"]  # a script run with python -c
    assert stage_imports(ROOT / "src/distributed.py") == []  # names src.stages.train only as a command
