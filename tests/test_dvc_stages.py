"""dvc.yaml against the code: every module a stage imports is a dep; plots and metrics; `dvc exp run -S`.

The deps rule, checked statically (ast, no import, so it is fast and stable). A stage's command is
- `wm <name> ...`: the stage imports wmcore/cli.py, the modules it imports (it imports no command's
  code), and the module of wmcore.commands that `build_parser()` binds to <name> (the one `wm` imports
  by name when that command runs); or
- `python -m <module> ...`: the stage imports <module> (no CLI at all);
- then, transitively, every module imported anywhere in a first-party module reached (top level or
  inside a function: a deferred import still runs), with the `__init__.py` of each package on the way
  (importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`).
`from pkg import name` counts as importing `pkg`, and `pkg.name` when that is a module. Each such file
must be a dep of the stage in dvc.yaml, or lie inside a folder that is one.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from wmcore.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("wmcore", "flows", "tasks")
CLI_MODULE = "wmcore.cli"


def module_file(name: str) -> Path | None:
    """The source file of first-party module `name` (a package's __init__.py), None if it is not one."""
    if name.split(".")[0] not in FIRST_PARTY:
        return None
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(node: ast.AST, module: str) -> set[str]:
    """First-party modules imported anywhere under `node` (code of module `module`)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found.update(alias.name for alias in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: from the package of `module`
                package = module.split(".")
                if module_file(module) is None or module_file(module).name != "__init__.py":
                    package = package[:-1]
                base = ".".join(package[: len(package) - n.level + 1] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in n.names)
    return {name for name in found if module_file(name) is not None}


def reachable_files(*modules: str) -> set[str]:
    """Repository-relative source files that importing `modules` runs (module docstring)."""
    seen: set[str] = set()
    todo = sorted(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages on the way
        todo += sorted(imported_modules(ast.parse(module_file(name).read_text(encoding="utf-8")), name))
    return {module_file(name).relative_to(ROOT).as_posix() for name in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def command_modules(cmd: str) -> tuple[str, ...]:
    """The first-party modules a stage's command imports first: (wmcore.cli, the command's module) or (<module>,)."""
    words = cmd.split()
    if words[:2] == ["python", "-m"]:
        return (words[2],)
    assert words[0] == "wm", f"stage command {cmd!r} is neither `wm <command>` nor `python -m <module>`"
    return CLI_MODULE, build_parser().parse_args([words[1]]).handler


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_imports_is_a_dep(name: str) -> None:
    stage = stages()[name]
    deps = [d.rstrip("/") for d in dep_paths(stage) if d.split("/")[0] in FIRST_PARTY]
    missing = sorted(f for f in reachable_files(*command_modules(stage["cmd"]))
                     if not any(f == d or f.startswith(d + "/") for d in deps))  # fmt: skip
    assert not missing, f"dvc.yaml stage {name!r}: add these deps (modules `{stage['cmd']}` imports): {missing}"
    stale = [d for d in deps if not (ROOT / d).exists()]
    assert not stale, f"dvc.yaml stage {name!r}: deps that do not exist: {stale}"


def test_the_rule_sees_deferred_imports_and_packages_on_the_way() -> None:
    files = reachable_files(*command_modules("wm train"))
    # wmcore.commands.train imports wmcore.train.loop; loop imports wmcore.metrics through train.steps
    assert {"wmcore/cli.py", "wmcore/train/__init__.py", "wmcore/train/loop.py", "wmcore/config.py"} <= files
    assert any(f.startswith("wmcore/metrics/") for f in files)
    assert "wmcore/tracking/mlflow_run.py" in files  # imported inside a function (deferred), still run
    assert not any(f.startswith("wmcore/evaluate/") for f in files)  # another command's imports are not counted


@pytest.mark.parametrize(("stage", "module"), [("corpus", "corpus"), ("corpus_native", "native_views")])
def test_the_corpus_stages_depend_on_neither_the_params_schema_nor_the_cli(stage: str, module: str) -> None:
    """Editing a config field or a `wm` option must not rebuild the corpus (a 2.3 GB download) or its
    native views (the val/test packages again, 175 MB)."""
    files = reachable_files(*command_modules(stages()[stage]["cmd"]))
    assert f"wmcore/data/{module}.py" in files
    assert not {"wmcore/config.py", "wmcore/cli.py"} & files


def test_plots_have_explicit_axes_and_metrics_are_lean() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    curves = [next(iter(p.items())) for p in dvc["plots"] if isinstance(p, dict)]
    images = [p for p in dvc["plots"] if isinstance(p, str)]
    assert {name for name, _ in curves} >= {"epoch_loss", "val_f1", "pr_curve"}
    assert all(spec.get("x") and spec.get("y") for _, spec in curves)
    assert images and all(p.endswith(".png") for p in images)
    metrics = [next(iter(m)) for s in dvc["stages"].values() for m in s.get("metrics", [])]
    assert metrics == ["${paths.train_dir}/metrics.json", "${paths.evaluate_dir}/scores.json"]


def test_dvc_exp_run_set_param_changes_only_the_value_it_sets(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML round trip: the file is kept in the layout
    that round trip writes, so nothing but the value set changes (no comment lost, no null turned empty)."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` runs on params.yaml

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text(encoding="utf-8").splitlines()
    apply_overrides(str(params), ["train.epochs=3"])
    after = params.read_text(encoding="utf-8").splitlines()
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["epochs: 3"]
