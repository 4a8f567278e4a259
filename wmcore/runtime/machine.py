"""What this machine is: the one description that tuning, benchmarks and exported weights record.

`machine_info()` is read once per call (cheap: no probing runs); callers keep the keys they need, so
a bench JSON, the tune history's fingerprint and a weights file's provenance describe a host alike.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil
import torch

from wmcore.runtime import device  # via the module: tests stand in other core counts


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows ("x86_64")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime  # deferred on purpose: optional here, and seconds to import
    except ImportError:
        return None
    return onnxruntime.__version__


def machine_info() -> dict[str, Any]:
    """{host, cpu, arch, cores_visible, cores_free, memory_gb, loadavg_start, python, torch, onnxruntime, gpu, cuda}.

    cores_free: the cores this process may really use (affinity, cgroup quota; wmcore.runtime.device);
    memory_gb: total host memory, GiB rounded; gpu/cuda: None without CUDA.
    """
    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores_visible": os.cpu_count(),
        "cores_free": device.available_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }
