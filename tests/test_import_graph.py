"""The imports of salgan/ and flows/ form a layered DAG (DESIGN.md, "One place for each thing"): commands and
stages on top, the library below them, and nothing below imports what stands above it.

Imports are read with ast, those inside functions included (they run too), so a lazy import cannot hide a
cycle; a function-local import is kept for what is heavy to load (torch, MLflow, Prefect, boto3, ...) and
nothing else.
"""

import ast
from pathlib import Path

import yaml

from salgan.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("salgan", "flows")
# Third-party packages that cost seconds to import or are optional installs: a module that loads one at its
# top may be imported inside the function that needs it.
HEAVY = {"torch", "torchvision", "mlflow", "prefect", "boto3", "botocore", "matplotlib", "dvc", "pandas", "numba"}
COMMAND_LAYER = "salgan.cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The module of this tree that ``name`` (a module, or a name inside one) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _nodes(tree: ast.AST, local: bool = False):
    """(node, inside a function) for every node, leaving out ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                yield child, local
                yield from _nodes(child, local)
            continue
        yield node, local
        yield from _nodes(node, local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported name, inside a function) for each import of ``module``, absolute, submodules named."""
    found = []
    for node, local in _nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, local) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(f"{node.module}.{alias.name}", local) for alias in node.names]
    return found


def edges(module: str, top_level_only: bool = False) -> set[str]:
    """The modules of this tree that ``module`` imports (and the packages whose ``__init__`` runs)."""
    targets = set()
    for name, local in imports(module):
        if top_level_only and local:
            continue
        target = resolve(name)
        if target and target != module:
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return targets - ancestors - {module}  # a submodule runs inside its package's own import


def closure(module: str, top_level_only: bool = False) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += edges(name, top_level_only)
    return seen


def find_cycle() -> list[str] | None:
    """A cycle of imports as a list of modules (first = last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(edges(name)):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[name] = "done"
        stack.pop()
        return None

    for name in sorted(MODULES):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def stage_modules() -> set[str]:
    """The modules DVC's stages run (dvc.yaml: ``salgan <command>`` or ``python -m <module>``)."""
    found = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        words = stage["cmd"].split()
        found.add(words[2] if words[:2] == ["python", "-m"] else COMMANDS[words[1]][0])
    return found


def top_modules() -> set[str]:
    """What stands on top: the stages, the commands, the command layer and the flows."""
    commands = {module for module, _ in COMMANDS.values()}
    return stage_modules() | commands | {COMMAND_LAYER} | {name for name in MODULES if name.startswith("flows")}


def heavy(module: str) -> bool:
    """Whether importing ``module`` loads a :data:`HEAVY` package (through its top-level imports)."""
    for name in closure(module, top_level_only=True):
        for imported, local in imports(name):
            if not local and imported.split(".")[0] in HEAVY:
                return True
    return False


def test_the_imports_form_no_cycle_even_counting_imports_inside_functions():
    assert find_cycle() is None, f"import cycle: {' -> '.join(find_cycle())}"


def test_the_library_imports_no_stage_command_or_flow():
    top = top_modules()
    assert {"salgan.predict", "salgan.prepare", "salgan.predict_tool", "salgan.registry", "flows.retrain"} <= top
    wrong = {module: sorted(edges(module) & top) for module in MODULES if module not in top and edges(module) & top}
    assert not wrong, f"library modules importing a stage, a command or a flow: {wrong}"


def test_serving_loads_neither_a_stage_nor_a_tool():
    """The served model (MLflow's pyfunc loader) runs salgan.serving: it needs the inference core only."""
    loaded = closure("salgan.serving")
    assert not loaded & top_modules(), sorted(loaded & top_modules())
    assert {"salgan.inference", "salgan.imaging", "salgan.models.loading"} <= loaded
    assert "salgan.batch" not in loaded and "salgan.fetch" not in loaded  # no S3 code


def test_the_predict_stage_loads_no_s3_code():
    loaded = closure("salgan.predict")
    assert not loaded & {"salgan.batch", "salgan.fetch", "salgan.predict_tool", "salgan.inputs"}, sorted(loaded)


def test_a_function_local_import_is_for_something_heavy_only():
    """Anything light is imported at the top, where a reader sees what a module depends on."""
    light = sorted(
        f"{module} imports {resolve(name)} inside a function"
        for module in MODULES
        for name, local in imports(module)
        if local and resolve(name) and resolve(name) != module and not heavy(resolve(name))
    )
    assert not light, light


FLUENT_STATE = {"set_tracking_uri", "set_experiment", "start_run", "end_run", "active_run", "set_registry_uri"}


def test_mlflow_is_reached_through_the_store_alone_with_no_process_state_or_private_api():
    """salgan/tracking/store.py builds the one client; nothing sets MLflow's process-wide state (whose
    leaking across stages needed workarounds) or imports MLflow's private names."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "MlflowClient"
            ) and module != "salgan.tracking.store":
                found.append(f"{module}: builds an MlflowClient")
            if isinstance(node, ast.Attribute) and node.attr in FLUENT_STATE:
                found.append(f"{module}: mlflow.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlflow"):
                found += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                found += [f"{module}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
    assert not found, found


def test_the_library_reports_through_logging_and_only_commands_print():
    top = top_modules()
    printing = sorted(
        f"{module}:{node.lineno}"
        for module, path in MODULES.items()
        if module not in top
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
    )
    assert not printing, printing
