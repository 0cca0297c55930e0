"""Imports run one way: the package's import graph (every import statement, function-level ones included) has no
circle, and the sampling code (backends/) never reaches up into the trained backend's training code."""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffusion_post"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of the package at `root` that `path` imports anywhere in its text (`from . import x` names the
    module x)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` -> the deepest module of the package it names
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, root, modules) for p in paths}


def test_the_import_graph_has_no_circle():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}: move the shared names to a module both sides import")
    assert "diffusion_post.backends.local_options" in order and "diffusion_post.config" in order


def test_backends_never_import_the_training_code():
    climbs = {(module, target) for module, targets in import_graph().items() if module.startswith("diffusion_post.backends")
              for target in targets if target.startswith("diffusion_post.training")}
    assert not climbs


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a circle made only by an import inside a function is found."""
    package = tmp_path / "diffusion_post"
    (package / "backends").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "backends" / "__init__.py").write_text("")
    (package / "backends" / "a.py").write_text("from .b import thing\n")
    (package / "backends" / "b.py").write_text("def thing():\n    from ..backends import a\n")
    graph = import_graph(package)
    assert graph["diffusion_post.backends.a"] == {"diffusion_post.backends.b"}
    assert graph["diffusion_post.backends.b"] == {"diffusion_post.backends.a"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
