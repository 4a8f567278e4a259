"""Real host out-of-memory errors are recognised, and the inference batch backs off from them.

torch's CPU allocator reports a failed allocation as a plain RuntimeError ("can't allocate
memory"), not torch.OutOfMemoryError; these tests make it fail for real by asking for more
address space than exists, and check that inference halves its batch instead of crashing.
Training's back-off is in test_training_step_faults.py; the adaptive batch's own unit tests in
tests/test_infer_batching.py.
"""

from __future__ import annotations

import pytest
import torch

from wmcore.infer.batching import AdaptiveBatchSizer
from wmcore.runtime.memory import is_oom_error

IMPOSSIBLE_ELEMENTS = 2**60  # 4 EiB of float32: no machine has it, the allocator refuses at once


def real_allocation_failure() -> RuntimeError:
    try:
        torch.empty(IMPOSSIBLE_ELEMENTS)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the allocation was expected to fail")


def test_a_real_cpu_allocation_failure_counts_as_out_of_memory():
    exc = real_allocation_failure()
    assert not isinstance(exc, torch.OutOfMemoryError)  # why message matching is needed on CPU
    assert is_oom_error(exc)
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize("fits", [1, 3])
def test_inference_batch_backs_off_from_a_real_allocation_failure(fits):
    """A batch over `fits` images asks the allocator for an impossible buffer; smaller ones compute."""
    done: list[int] = []

    def predict(batch):
        scratch = torch.empty(IMPOSSIBLE_ELEMENTS if len(batch) > fits else len(batch))
        done.extend(batch)
        return [x * 2 for x in batch] if scratch.numel() else []

    sizer = AdaptiveBatchSizer(start=8, min_size=1, max_size=8, memory_ok=lambda n: True)
    assert sizer.run(list(range(20)), predict) == [x * 2 for x in range(20)]
    assert done == list(range(20))  # every image once, in order: nothing lost or repeated by the retries
    assert sizer.size <= fits and sizer.backoffs >= 1
