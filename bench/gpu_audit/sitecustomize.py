"""Records the top-level modules each Python process imported (bench/gpu_kit.py reads them), and can play
the device machine's absence of some packages.

On PYTHONPATH with GPU_AUDIT=FILE, every interpreter appends its sys.modules' top-level names to FILE at exit.
GPU_AUDIT_BLOCK="a b": importing top-level module a or b raises ImportError, as where they are not installed
(the run shows whether the GPU path works without them).
"""

import atexit
import importlib.abc
import os
import sys


class _Absent(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"No module named {fullname!r} (GPU_AUDIT_BLOCK)", name=fullname)
        return None


def _record() -> None:
    names = sorted({name.split(".")[0] for name in list(sys.modules)})
    with open(os.environ["GPU_AUDIT"], "a", encoding="utf-8") as fh:
        fh.write(" ".join(names) + "\n")


if os.environ.get("GPU_AUDIT_BLOCK"):
    sys.meta_path.insert(0, _Absent(set(os.environ["GPU_AUDIT_BLOCK"].split())))
if os.environ.get("GPU_AUDIT"):
    atexit.register(_record)
