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


def stage_closures() -> dict[str, tuple[set[Path], list[str]]]:
    """Each stage's import closure and its dvc.yaml deps."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()  # "salgan <command> --params params.yaml" or "python -m <module> ..."
        module = words[2] if words[:2] == ["python", "-m"] else COMMANDS[words[1]][0]
        found[name] = import_closure(module), stage["deps"]
    return found


def test_every_stage_lists_the_code_it_imports():
    missing = {}
    for name, (closure, deps) in stage_closures().items():
        lacking = sorted(str(path) for path in closure if not covered(path, deps))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml stages lack code dependencies: {missing}"


def test_no_stage_lists_code_it_does_not_run():
    """A code dep the stage never imports would rerun it for nothing (the S3 batch code once reran three)."""
    extra = {}
    for name, (closure, deps) in stage_closures().items():
        code = [dep for dep in deps if dep.startswith("salgan/")]
        unused = [dep for dep in code if not any(covered(path, [dep]) for path in closure)]
        if unused:
            extra[name] = unused
    assert not extra, f"dvc.yaml stages list code they do not import: {extra}"
    assert "salgan/batch.py" not in stage_closures()["predict"][1]


def test_the_closure_follows_lazy_and_package_imports():
    closure = import_closure("salgan.evaluate")
    assert Path("salgan/tracking/models.py") in closure  # imported inside a function, when MLflow is on
    assert Path("salgan/models/generator.py") in closure and Path("salgan/__init__.py") in closure


def rendered_dvc_yaml(values: dict) -> dict:
    """dvc.yaml with its ``${section.key}`` filled from ``values`` (flat settings), as DVC renders it."""
    import re

    text = (REPO / "dvc.yaml").read_text()
    return yaml.safe_load(re.sub(r"\$\{([a-z_]+\.[a-z_]+)\}", lambda m: str(values.get(m.group(1), m.group(0))), text))


def paths(entries: list) -> set[str]:
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries}


def test_the_stages_outputs_are_the_layouts_files_under_the_folders_params_yaml_names():
    """The folders come from params.yaml, the file names from salgan/layout.py: a changed ``train.output`` is
    tracked by DVC where train writes, and a renamed file in layout.py fails here."""
    from salgan.layout import HISTORY_LOSSES, ModelFiles, ReportFiles
    from salgan.settings import flatten, load_params, params_from_dict, to_dict

    moved = params_from_dict({"train": {"output": "elsewhere/models"}, "evaluate": {"output": "elsewhere/reports"}})
    for params in (load_params(REPO / "params.yaml"), moved):
        spec = rendered_dvc_yaml(flatten(to_dict(params)))
        stages = spec["stages"]
        models, reports = ModelFiles(Path(params.train.output)), ReportFiles(Path(params.evaluate.output))
        assert paths(stages["download"]["outs"]) == {params.download.output}
        assert paths(stages["prepare"]["deps"]) >= {params.prepare.input}
        assert paths(stages["prepare"]["outs"]) == {params.prepare.output}
        trained = {str(models.generator), str(models.snapshots), str(models.history), str(models.lineage)}
        assert paths(stages["train"]["outs"]) == trained
        assert paths(stages["evaluate"]["deps"]) >= trained - {str(models.snapshots)} | {params.train.data}
        evaluated = paths(stages["evaluate"]["outs"]) | paths(stages["evaluate"]["metrics"])
        report_files = ("metrics", "per_image", "examples", "progression", "progression_gif", "losses", "page")
        assert evaluated == {str(getattr(reports, name)) for name in report_files}
        assert paths(stages["predict"]["outs"]) == {params.predict.output}
        assert paths(stages["package"]["deps"]) >= {params.predict.output, str(models.generator)}
        assert paths(stages["package"]["outs"]) == {params.package.output}
        assert spec["metrics"] == [str(reports.metrics)]
        history = next(entry for entry in spec["plots"] if isinstance(entry, dict))
        assert history == {str(models.history): {"x": "epoch", "y": list(HISTORY_LOSSES)}}


def test_each_setting_a_stages_paths_name_is_one_of_its_params():
    """A path templated from a setting changes when the setting does: DVC must rerun the stage then."""
    import re

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        used = set(re.findall(r"\$\{([a-z_]+\.[a-z_]+)\}", yaml.safe_dump({k: stage.get(k) for k in ("deps", "outs")})))
        listed = set(stage.get("params") or [])
        assert all(key in listed or key.split(".")[0] in listed for key in used), (name, used - listed)
