"""Adaptive batch sizing for inference: grow while memory allows, halve on OOM, remember what worked.

`AdaptiveBatchSizer.run(items, fn)` calls `fn` on consecutive chunks of `items`.
When a chunk fails with an out-of-memory error (`wmcore.runtime.memory.is_oom_error`:
CUDA OOM, host MemoryError, or `HostMemoryBudgetExceeded` raised by `check_budget`
on CPU), the size is halved and only that chunk is retried; chunks that already
succeeded are never run again, so every item is processed exactly once. After a
success the size grows (doubling, up to `max_size`; never again after a
back-off) while the memory probe reports usage under the threshold. The size that
worked is stored per key (device | model | backend | tile) in a small JSON file
so the next run starts from it instead of rediscovering it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from wmcore.errors import WmError
from wmcore.runtime.atomic import write_json
from wmcore.runtime.memory import HostMemoryBudgetExceeded, is_oom_error

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatchSizeCache:
    """A JSON file {key: batch size} shared by runs; read-modify-write under a file lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def get(self, key: str) -> int | None:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            return None  # no cache yet, or a damaged one: start from the configured size
        return value if isinstance(value, int) and value > 0 else None

    def put(self, key: str, size: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=30):
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                data = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                data = {}
            data[key] = size
            write_json(self.path, data)


class AdaptiveBatchSizer:
    """Chooses the batch size of inference calls and backs off on out-of-memory errors.

    Args:
        start: first batch size (replaced by the cached size for `cache_key` when there is one).
        min_size, max_size: bounds; an OOM at `min_size` raises WmError.
        adaptive: False = fixed size `start` (no growth, no back-off, no cache).
        memory_ok: probe called with a candidate size; True when running it keeps memory under the
            threshold (growth stops when it says False). None = never grow.
        cache: where the size that worked is remembered; None = no memory between runs.
        cache_key: identity of (device, model, backend, tile size) the size belongs to.
    """

    def __init__(
        self,
        start: int,
        min_size: int = 1,
        max_size: int = 64,
        adaptive: bool = True,
        memory_ok: Callable[[int], bool] | None = None,
        cache: BatchSizeCache | None = None,
        cache_key: str = "",
    ) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"batch size bounds must satisfy 1 <= min ({min_size}) <= max ({max_size})")
        self.min_size, self.max_size, self.adaptive = min_size, max_size, adaptive
        self.memory_ok = memory_ok
        self.cache, self.cache_key = (cache if adaptive else None), cache_key
        cached = self.cache.get(cache_key) if self.cache else None
        self.size = min(max(cached or start, min_size), max_size)
        self._proven = self._saved = cached  # latest size that completed a full batch; the cached one
        self.ceiling = max_size  # lowered to the backed-off size after an OOM
        self.attempts = 0
        self.successes = 0
        self.backoffs = 0

    @property
    def success_rate(self) -> float:
        """Share of batch calls that completed (1.0 before any call)."""
        return self.successes / self.attempts if self.attempts else 1.0

    def run(self, items: Sequence[T], fn: Callable[[Sequence[T]], list[R]], limit: int | None = None) -> list[R]:
        """Call `fn` on chunks of `items` (each item exactly once); concatenated results in order.

        limit: most items per chunk for this call (the caller's pixel budget), below the size if lower;
        a chunk cut short by it does not count as a full-size batch, so it never makes the size grow.
        """
        results: list[R] = []
        start = 0
        cap = max(1, limit) if limit is not None else None
        while start < len(items):
            take = self.size if cap is None else min(self.size, cap)
            chunk = items[start : start + take]
            self.attempts += 1
            try:
                out = fn(chunk)
            except Exception as exc:
                if not (self.adaptive and is_oom_error(exc)):
                    raise
                self._back_off(len(chunk), exc)
                continue
            results.extend(out)
            self.successes += 1
            start += len(chunk)
            if len(chunk) == self.size:
                self._proven = self.size
            self._maybe_grow(len(chunk))
        return results

    def _back_off(self, failed: int, exc: BaseException) -> None:
        if failed <= self.min_size:
            raise WmError(
                f"out of memory at the smallest batch size {self.min_size} ({exc}); lower predict.tile_size, "
                "raise predict.host_memory_budget_mb, or free memory"
            ) from None
        self.size = max(self.min_size, failed // 2)
        # No growth after a back-off: probing sizes between half and the failed one costs more OOMs
        # (each one a wasted batch) than the speed it could win; the cache keeps the size for next time.
        self.ceiling = self.size
        self.backoffs += 1
        self._clear_device_cache()
        log.warning("batch of %d ran out of memory (%s); retrying it at batch size %d", failed, exc, self.size)

    def _maybe_grow(self, done: int) -> None:
        # Grow only after a full-size batch: a short final chunk says nothing about a larger size.
        if not self.adaptive or done < self.size or self.size >= self.ceiling or self.memory_ok is None:
            return
        candidate = min(self.size * 2, self.ceiling)
        if self.memory_ok(candidate):
            log.debug("batch size %d -> %d (memory under threshold)", self.size, candidate)
            self.size = candidate

    @staticmethod
    def _clear_device_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def reset_stats(self) -> None:
        """Zero the attempt/success/back-off counters (the size and its ceiling are kept)."""
        self.attempts = self.successes = self.backoffs = 0

    def save(self) -> None:
        """Remember the latest size that completed a full batch (no-op without a cache or news)."""
        if self.cache is not None and self._proven is not None and self._proven != self._saved:
            self.cache.put(self.cache_key, self._proven)
            self._saved = self._proven

    def summary(self) -> dict[str, Any]:
        return {
            "batch_size_final": self.size,
            "batch_success_rate": round(self.success_rate, 4),
            "batch_attempts": self.attempts,
            "batch_backoffs": self.backoffs,
        }


def check_budget(estimated_mb: float, budget_mb: float) -> None:
    """Raise HostMemoryBudgetExceeded when a batch's estimated memory is above a positive budget."""
    if budget_mb > 0 and estimated_mb > budget_mb:
        raise HostMemoryBudgetExceeded(
            f"batch needs ~{estimated_mb:.0f} MB, over predict.host_memory_budget_mb={budget_mb:.0f}"
        )
