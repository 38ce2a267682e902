"""The import graph of the production modules, read statically: no circle, no module imports a script, and the
inference side never reaches the training loop.

Every ``import`` and ``from ... import`` counts, also those inside functions and under ``TYPE_CHECKING``. Scripts
are the top-level modules with an ``if __name__ == "__main__":`` block (the CLIs); tests and bench/ may import them.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"tests", "bench", ".venv", "exps", "data", "demo_data"}


def production_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every production .py file of the repository."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = production_modules()


def imports_of(name: str) -> set[str]:
    """The production modules that module ``name`` imports (the most specific one an import names)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}
SCRIPTS = sorted(name for name, path in MODULES.items()
                 if "." not in name and 'if __name__ == "__main__":' in path.read_text())


def test_the_graph_is_read():
    assert {"trainSpeakerNet", "speakerActivationMap", "dataprep"} <= set(SCRIPTS)
    assert {"dtdysv.data.audio", "dtdysv.data.lists"} <= GRAPH["DatasetLoader"]
    assert {"dtdysv.errors", "dtdysv.runtime.fileio"} <= GRAPH["dtdysv.data.audio"]
    assert "dtdysv.data.audio" in GRAPH["models._frontend"] and "models._frontend" in GRAPH["models._resnet"]


def test_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == []


# Known breaches, each an xfail(strict) that fails once fixed, so that the entry is removed.
@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_script(name):
    assert sorted(GRAPH[name] & set(SCRIPTS)) == []


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


TRAINING = {name for name in MODULES if name == "trainSpeakerNet" or name.split(".")[0] in ("optimizer", "scheduler")}
INFERENCE = sorted(name for name in MODULES
                   if name in ("speakerapi", "export", "scoreSpeakers", "speakerActivationMap", "SpeakerNet",
                               "dtdysv.api", "dtdysv.score_cli")
                   or name.startswith("dtdysv.evaluation"))


def test_inference_sides_are_listed():
    assert {"speakerapi", "dtdysv.evaluation.embed", "dtdysv.evaluation.pipeline"} <= set(INFERENCE)
    assert {"trainSpeakerNet", "optimizer.sgd", "scheduler.exponential"} <= TRAINING


@pytest.mark.parametrize("name", INFERENCE)
def test_inference_never_imports_the_training_loop(name):
    assert sorted(reachable(name) & TRAINING) == []


INSTALLED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]


@pytest.mark.parametrize("name", INSTALLED)
def test_the_installed_modules_import_only_each_other(name):
    """`pip install .` installs these modules alone (tests/test_install.py builds the wheel): they may import each
    other and their packages, nothing of the checkout (config.py, SpeakerNet.py, models/, ...)."""
    packages = {".".join(module.split(".")[:i]) for module in INSTALLED for i in range(1, module.count(".") + 1)}
    assert name in MODULES
    assert sorted(reachable(name) - set(INSTALLED) - packages) == []
