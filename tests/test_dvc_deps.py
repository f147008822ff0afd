"""dvc.yaml lists, for each stage, every source file its command can import: a code change reruns it."""

import ast
from pathlib import Path

import yaml

from salgan.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """salgan.x.y -> salgan/x/y.py or salgan/x/y/__init__.py (relative to the repository)."""
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(path: Path) -> set[str]:
    """Every salgan module a file imports, at the top or inside a function (lazy imports run too)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "salgan"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "salgan":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from salgan import train`
    return found


def import_closure(module: str) -> set[Path]:
    """The files of ``module`` and of everything it imports, transitively, with the packages' __init__."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing salgan.a.b runs salgan/__init__ and salgan/a/__init__
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += sorted(imported_modules(path))
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def test_every_stage_lists_the_code_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]  # "salgan <command> --params params.yaml"
        closure = import_closure(COMMANDS[command][0])
        lacking = sorted(str(path) for path in closure if not covered(path, stage["deps"]))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml stages lack code dependencies: {missing}"


def test_the_closure_follows_lazy_and_package_imports():
    closure = import_closure("salgan.evaluate")
    assert Path("salgan/tracking/models.py") in closure  # imported inside a function, when MLflow is on
    assert Path("salgan/models/generator.py") in closure and Path("salgan/__init__.py") in closure
