"""`wm` as a real process: a quiet offline environment, run to the end, or start and SIGKILL.

Every process gets its Prefect home and MLflow store under the test's tmp_path, and runs with
cwd = tmp_path, so nothing lands in the repository.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REPO_PARAMS = REPO / "params.yaml"
# Small tiles keep inference of tiny images fast and still exercise the tiled path.
PREDICT_SETS = ("predict.tile_size=64", "predict.tile_overlap=8", "base.threads=1", "predict.save_probability=true")
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def process_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a `wm` process: offline, quiet, its Prefect home and MLflow store under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "WMDETECT_"))}
    env.update(
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        PYTHONPATH=str(REPO),
        TQDM_DISABLE="1",  # progress bars would fill the captured stderr the tests read
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def cli_args(*args: str, sets: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Arguments of `wm --params <repo params.yaml> -S ... <args>` (for wmcore.cli.main in this process)."""
    argv = ["--params", str(REPO_PARAMS)]
    for item in sets:
        argv += ["-S", item]
    return [*argv, *args]


def wm_argv(*args: str, sets: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Command line of `wm --params <repo params.yaml> -S ... <args>` run by this interpreter."""
    return [sys.executable, "-m", "wmcore.cli", *cli_args(*args, sets=sets)]


def run_wm(
    tmp_path: Path,
    *args: str,
    sets: tuple[str, ...] | list[str] = (),
    timeout: float = 180,
    preexec_fn: Callable[[], None] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `wm` to the end in a fresh process (cwd = tmp_path); returns its exit code and output."""
    return subprocess.run(
        wm_argv(*args, sets=sets), cwd=tmp_path, env=process_env(tmp_path, **env), capture_output=True,
        text=True, timeout=timeout, check=False, preexec_fn=preexec_fn,
    )  # fmt: skip


class WmProcess:
    """A `wm` process started in the background; its stdout/stderr go to files beside tmp_path."""

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        sets: tuple[str, ...] | list[str] = (),
        preexec_fn: Callable[[], None] | None = None,
        **env: str,
    ) -> None:
        stem = tmp_path / f"wm-{time.monotonic_ns()}"
        self.out_path, self.err_path = Path(f"{stem}.out"), Path(f"{stem}.err")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                wm_argv(*args, sets=sets), cwd=tmp_path, env=process_env(tmp_path, **env), stdout=out, stderr=err,
                preexec_fn=preexec_fn,
            )  # fmt: skip

    def wait_until(self, ready: Callable[[], bool], timeout: float = 120) -> bool:
        """Poll until `ready()` is true while the process runs; False if it ended (or timed out) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready():
                return True
            time.sleep(0.005)
        return False

    def kill_when(self, ready: Callable[[], bool], timeout: float = 120) -> bool:
        """SIGKILL the process as soon as `ready()` is true; False if it ended (or timed out) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ready():
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                return True
            time.sleep(0.005)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        return False

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback (most recent call last)" not in stderr, stderr[-3000:]


def temp_files(folder: Path) -> list[Path]:
    """Temp files of atomic writes (`.<name>.tmp-<pid>`) anywhere under `folder`."""
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def without_file_permission_override() -> None:
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set.

    The started program keeps uid 0 but is held to file modes like any user, so a chmod 000
    file is really unreadable to it. Not root (or not allowed): nothing changes, file modes
    already apply.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)


def file_modes_apply() -> bool:
    """True when a process started with `without_file_permission_override` cannot read a mode-000 file."""
    with tempfile.TemporaryDirectory() as folder:
        secret = Path(folder) / "secret"
        secret.write_bytes(b"x")
        secret.chmod(0)
        probe = subprocess.run([sys.executable, "-c", f"open({str(secret)!r}, 'rb')"], capture_output=True,
                               preexec_fn=without_file_permission_override, check=False)  # fmt: skip
        return probe.returncode != 0
