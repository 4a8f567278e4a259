"""The package graph: import-linter's contracts hold, and no first-party import hides inside a function.

A function-local import of our own code is how an import cycle or an upward import hides from a reader
(and from import-linter's layer names); the one allowed reason is deferring an optional heavy
dependency on purpose (MLflow, ONNX Runtime), and then a comment on the line (or the line above) says
so with the word "deferred".
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("wmcore", "flows", "tasks", "bench")


def local_first_party_imports() -> list[str]:
    """`path:line` of every import of our own code inside a function body with no "deferred" comment."""
    found = []
    for package in FIRST_PARTY:
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            tree = ast.parse("\n".join(lines))
            for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = ["." if node.level else node.module or ""]
                    else:
                        continue
                    if not any(n == "." or n.split(".")[0] in FIRST_PARTY for n in names):
                        continue
                    said = " ".join(lines[max(0, node.lineno - 2) : node.end_lineno]).lower()
                    if "deferred" not in said:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return sorted(set(found))


def test_no_first_party_import_hides_inside_a_function() -> None:
    found = local_first_party_imports()
    assert not found, f"move these imports to the top of their module (or say why they are deferred): {found}"


@pytest.mark.skipif(shutil.which("lint-imports") is None and not (Path(sys.executable).parent / "lint-imports").is_file(),
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_the_import_contracts_hold() -> None:
    """pyproject.toml [tool.importlinter]: at least 5 contracts, one a layers contract over all of wmcore."""
    exe = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(exe) if exe.is_file() else "lint-imports", "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    kept = [line for line in done.stdout.splitlines() if line.endswith(" KEPT")]
    assert len(kept) >= 5 and any("wmcore is layered" in line for line in kept), done.stdout


def test_every_wm_command_resolves_to_its_code() -> None:
    """Each subcommand names a wmcore.commands module with run(args), or an installed entry point (flows, bench)."""
    from wmcore.cli import build_parser, command_function

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps the subparsers here
    for name in commands:
        args = parser.parse_args([name])
        run = command_function(args)
        assert callable(run), name
        where = args.handler if getattr(args, "handler", None) else run.__module__
        assert where.split(".")[0] in ("wmcore", "flows", "bench"), (name, where)
