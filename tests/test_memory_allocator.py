"""predict.malloc_mmap_threshold_kb: a fixed glibc mmap threshold gives freed tensors back at once.

Run in fresh interpreters: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from wmcore.runtime.memory import set_malloc_mmap_threshold

CHILD = """
import json, sys
import numpy as np
from wmcore.runtime.memory import process_rss_mb, set_malloc_mmap_threshold
applied = set_malloc_mmap_threshold(int(sys.argv[1]))
big = np.ones(30 * 2**20, np.uint8); del big          # glibc's default then serves <= 30 MB from the heap
base = process_rss_mb()
mid = np.ones(20 * 2**20, np.uint8); del mid          # a 20 MB tensor, used and freed
print(json.dumps({"applied": applied, "kept_mb": process_rss_mb() - base}))
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None, reason="glibc mallopt only"
)


def _child(kib: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(kib)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fixed_threshold_returns_freed_blocks_where_the_dynamic_one_keeps_them():
    dynamic, fixed = _child(0), _child(1024)
    assert dynamic["applied"] is False and fixed["applied"] is True
    assert dynamic["kept_mb"] > 15  # the freed 20 MB stayed in the heap
    assert fixed["kept_mb"] < 5  # its own mapping, unmapped on free


def test_zero_leaves_the_allocator_alone():
    assert set_malloc_mmap_threshold(0) is False
