"""The house rules (ARCHITECTURE.md), checked on the code as it is.

- Layers: the foundation (`countrytune`, with the artefact modules) imports nothing above it;
  the scoring library imports only the foundation; a stage imports the foundation, the
  library and its own folder; the CLI (`countrytune_cli`) imports stages and nothing imports
  it but the two launchers. Module-level imports form no circle.
- Hand-off files are named only in their artefact module: no other module spells
  `stats.json`, `run.json`, ... , so no other module opens them.
- Rooms stay livable: no package module over 600 lines; no function over 80 lines in the
  training loop or the prep runner.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("countrytune", "countrytune_cli", "data_prep", "pipeline", "launch")
LIBRARIES = ("pipeline.scoring", "pipeline.registry")
STAGES = ("data_prep", "launch", "pipeline.training", "pipeline.evaluation", "pipeline.export",
          "pipeline.vocabulary", "pipeline.model_import", "pipeline.preference")
# Entry points a user or scheduler types (`python -m countrytune`, `-m pipeline.train`): they
# name the floor above them and nothing imports them.
LAUNCHERS = ("countrytune.__main__", "pipeline.train", "countrytune_cli.__main__")
ARTEFACT_FILES = {  # file name -> the one module that writes and reads it
    "stats.json": "countrytune.artifacts.prep_output",
    "DATA_CARD.md": "countrytune.artifacts.prep_output",
    "run.json": "countrytune.artifacts.run_record",
    "results.json": "countrytune.artifacts.results",
    "provenance.json": "countrytune.artifacts.provenance",
    "manifest.json": "countrytune.artifacts.manifest",
    "vocabulary_extension.json": "countrytune.artifacts.vocabulary_extension",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Project modules `name` imports (anywhere in the file, or at module level only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return found


def _floor(module: str) -> str:
    """The room a module lives in: foundation, a library, a stage, the CLI or a launcher."""
    if module in LAUNCHERS:
        return "launcher"
    if module.split(".")[0] == "countrytune_cli":
        return "cli"
    if module.split(".")[0] == "countrytune":
        return "foundation"
    for room in LIBRARIES + STAGES:
        if module == room or module.startswith(room + "."):
            return room
    return module  # a package's own __init__ (pipeline)


def test_every_module_imports():
    # Heavy imports stay inside functions, so this also proves `--help` needs no torch.
    names = sorted(m for m in MODULES if m not in LAUNCHERS)
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % names
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_layers():
    broken = []
    for name, path in MODULES.items():
        floor = _floor(name)
        for target in _imports(name, path):
            to = _floor(target)
            if to == floor or to == "foundation" and floor != "foundation" or to == target.split(".")[0]:
                continue  # its own room, the foundation from above, a bare package's docstring
            allowed = {
                "foundation": set(),
                "cli": {*STAGES, *LIBRARIES},
                "launcher": {"cli", "pipeline.training"},
            }.get(floor, set(LIBRARIES) if floor in STAGES else set())
            if to not in allowed:
                broken.append(f"{name} ({floor}) imports {target} ({to})")
    assert not broken, "imports that break the layers:\n  " + "\n  ".join(broken)


def test_nothing_imports_the_cli_but_its_launchers():
    users = sorted(name for name, path in MODULES.items()
                   if _floor(name) not in ("cli", "launcher")
                   and any(_floor(t) == "cli" for t in _imports(name, path)))
    assert users == []


def test_no_import_circle():
    graph = {name: {t for t in _imports(name, path, top_level_only=True) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, trail + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
        if isinstance(node, ast.ClassDef):  # attribute docstrings (the schemas' field docs)
            for before, after in zip(node.body, node.body[1:]):
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                        isinstance(before, (ast.AnnAssign, ast.Assign)):
                    docstrings.add(id(after.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_hand_off_files_are_named_only_by_their_artefact_module():
    spelled = []
    for name, path in MODULES.items():
        for line, text in _code_strings(path):
            for file_name, owner in ARTEFACT_FILES.items():
                if text == file_name and name != owner:
                    spelled.append(f"{path.relative_to(ROOT)}:{line} names {file_name} (owner: {owner})")
    assert not spelled, "\n".join(spelled)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_under_600_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= 600, f"{MODULES[name].relative_to(ROOT)}: {lines} lines; split it by what it does"


@pytest.mark.parametrize("module", ["pipeline.training.loop", "data_prep.runner"])
def test_no_long_function_in_the_loop_and_the_runner(module):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_recipes_named_in_recipes_and_docs_exist():
    import re

    missing = []
    for source in [*sorted((ROOT / "recipes").rglob("*.yaml")), ROOT / "README.md", ROOT / "ARCHITECTURE.md"]:
        for found in re.findall(r"recipes/[\w./-]+\.yaml", source.read_text(encoding="utf-8")):
            if not (ROOT / found).is_file():
                missing.append(f"{source.relative_to(ROOT)} names {found}")
    assert not missing, missing
