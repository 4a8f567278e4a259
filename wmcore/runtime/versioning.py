"""Run pipeline stages through DVC so every run is versioned and unchanged stages are skipped.

The Prefect pipeline calls `repro_stage` for each step instead of calling the
step function directly: DVC then records the hashes of what the step used in
`dvc.lock` (the flow and `dvc repro` produce the same lock), and skips a stage
whose deps and params are unchanged. Parameter overrides go through
`dvc exp run -S`, DVC's own mechanism, so they are versioned as an experiment.

DVC's output is streamed as it comes, less its repetitions: each `dvc repro <stage>` also reports
every upstream stage ("Stage 'prepare' didn't change, skipping", four times in a pipeline run)
and remote/git hints this project has no use for. `stages_changed` asks DVC which stages a
repro would run, without running them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wmcore.errors import WmError

log = logging.getLogger(__name__)

UNCHANGED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping$")
# repeated by every `dvc repro <stage>` of a pipeline run: the stage's own "didn't change" line says it
NOISE = ("Use `dvc push` to send your updates to remote storage.", "To track the changes with git, run:",
         "git add dvc.lock", "To enable auto staging, run:", "dvc config core.autostage true",
         "Data and pipelines are up to date.", "Updating lock file 'dvc.lock'")  # fmt: skip


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
            if stream and shown(line, stage):
                sys.stderr.write(line)
    out = "".join(lines)
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise WmError(f"dvc stage '{stage}' failed (exit {proc.returncode}):\n{tail}")
    ran = f"Running stage '{stage}'" in out
    log.info("stage %s %s in %.1fs", stage, "ran" if ran else "unchanged (skipped)", time.perf_counter() - t0)
    return StageResult(stage=stage, ran=ran, seconds=time.perf_counter() - t0, output=out)


def shown(line: str, stage: str) -> bool:
    """Whether a line of `dvc repro <stage>` output is worth showing: not an upstream stage's "didn't change",
    not a hint about remotes or git staging, not "up to date" again, not a blank line."""
    text = line.strip()
    if not text or text in NOISE:
        return False
    unchanged = UNCHANGED.match(text)
    return unchanged is None or unchanged["stage"] == stage


def stages_changed(stages: list[str] | tuple[str, ...], root: str | Path = ".") -> list[str]:
    """The stages among `stages` (and their upstream stages) that `dvc repro` would run now, per `dvc status`."""
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, "status", "--json", "--with-deps", *stages], cwd=root, env=_env(),
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise WmError(f"dvc status failed (exit {proc.returncode}):\n{tail}")
    try:
        changed = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        raise WmError(f"dvc status --json printed no JSON: {proc.stdout[:200]!r}") from None
    return sorted(name.rsplit(":", 1)[-1] for name in changed)
