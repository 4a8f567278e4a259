"""Run pipeline stages through DVC so every run is versioned and unchanged stages are skipped.

The Prefect pipeline calls `repro_stage` for each step instead of calling the
step function directly: DVC then records the hashes of what the step used in
`dvc.lock` (the flow and `dvc repro` produce the same lock), and skips a stage
whose deps and params are unchanged. Parameter overrides go through
`dvc exp run -S`, DVC's own mechanism, so they are versioned as an experiment.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wmcore.errors import WmError

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    ran: bool  # False when DVC found the stage unchanged and skipped it
    seconds: float
    output: str


def _env() -> dict[str, str]:
    # DVC runs stage commands (`wm ...`) through the shell: make this interpreter's scripts visible.
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def dvc_command(stage: str, overrides: list[str] | None = None) -> list[str]:
    dvc = str(Path(sys.executable).parent / "dvc")
    if overrides:
        cmd = [dvc, "exp", "run", stage]
        for item in overrides:
            cmd += ["-S", item]
        return cmd
    return [dvc, "repro", stage]


def repro_stage(
    stage: str, root: str | Path = ".", overrides: list[str] | None = None, stream: bool = True
) -> StageResult:
    """Reproduce one DVC stage (and its out-of-date upstream stages) in `root`."""
    root = Path(root)
    if not (root / "dvc.yaml").exists():
        raise WmError(f"{root / 'dvc.yaml'}: not found; run from the project root")
    t0 = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        dvc_command(stage, overrides),
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # stream so progress bars of long stages stay visible
            lines.append(line)
            if stream:
                sys.stderr.write(line)
    out = "".join(lines)
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise WmError(f"dvc stage '{stage}' failed (exit {proc.returncode}):\n{tail}")
    ran = f"Running stage '{stage}'" in out
    log.info("stage %s %s in %.1fs", stage, "ran" if ran else "unchanged (skipped)", time.perf_counter() - t0)
    return StageResult(stage=stage, ran=ran, seconds=time.perf_counter() - t0, output=out)
