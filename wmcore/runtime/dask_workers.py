"""Torch thread sizing inside Dask worker processes.

Torch gives every process one intra-op thread per core. N Dask worker processes on
one machine would then run N x cores OpenMP threads and collapse (measured up to 25x
slower), so each worker process takes its share of its host: the configured
`distributed.threads_per_worker`, or the cores it may use (affinity, cgroup quota)
divided by the worker processes the scheduler lists on the same host. The share is
worked out at the first task a process runs and kept for its lifetime (workers that
join later do not shrink it: start all workers before submitting work). Outside a
Dask worker nothing changes. `distributed` is imported only when a worker is found,
so the local runner never needs it.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.runtime.device import available_cores, configure_threads

log = logging.getLogger(__name__)

_share: int | None = None  # this process's torch threads, once sized (None: not sized or not a worker)
_share_lock = threading.Lock()


def thread_share(cores: int, processes_on_host: int, requested: int = 0) -> int:
    """Torch threads for one of `processes_on_host` worker processes sharing `cores` (>= 1).

    `requested` > 0 is taken as is (the user knows their machine); otherwise cores are split
    evenly, rounding down so the processes never ask for more threads than there are cores.
    """
    if requested > 0:
        return requested
    return max(1, cores // max(1, processes_on_host))


def current_worker() -> Any | None:
    """The Dask worker running this code, or None (not inside a Dask task, or dask not installed)."""
    if "distributed" not in sys.modules:  # a worker process has always imported it
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def processes_on_host(worker: Any) -> int:
    """Worker processes the scheduler lists on `worker`'s host (itself included; >= 1)."""
    from distributed import get_client

    try:
        workers = get_client().scheduler_info(n_workers=-1)["workers"]
    except Exception as exc:  # an unreachable scheduler must not fail the task: assume the worst case
        log.warning(
            "dask worker %s: cannot list the workers of its host (%s); using 1 torch thread", worker.address, exc
        )
        return available_cores()
    same_host = [info for info in workers.values() if info.get("host") == worker.ip]
    return max(1, len(same_host))


def size_worker_threads(requested: int = 0) -> int | None:
    """On a Dask worker: set torch threads to this process's share (once) and return it; elsewhere None."""
    global _share
    worker = current_worker()
    if worker is None:
        return None
    with _share_lock:
        if _share is None:
            host_processes = processes_on_host(worker) if requested <= 0 else 1
            _share = thread_share(available_cores(), host_processes, requested)
            log.info("dask worker %s: %d torch threads (%d worker processes on %s, %d cores)",
                     worker.address, _share, host_processes, worker.ip, available_cores())  # fmt: skip
        configure_threads(_share)
        return _share


def params_for_this_process(params: Params) -> Params:
    """`params` with base.threads set to this Dask worker's share; unchanged outside a worker.

    The predictor sizes torch threads from base.threads and keys its per-process cache on it,
    so setting it here keeps both right on every worker.
    """
    share = size_worker_threads(params.distributed.threads_per_worker)
    if share is None or share == params.base.threads:
        return params
    return params.model_copy(update={"base": params.base.model_copy(update={"threads": share})})


def check_scheduler(address: str, timeout_s: float) -> int:
    """Reach the Dask scheduler at `address`; returns its worker count, or a WmError saying what to do.

    Run before a flow starts, so a wrong address or an empty cluster is one clear line, not a
    flow run that fails after its connect timeout (or waits forever for workers).
    """
    from distributed import Client

    try:
        with Client(address, timeout=timeout_s, set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
    except (OSError, TimeoutError, ValueError) as exc:  # unreachable, timed out, or not an address
        raise WmError(
            f"cannot reach the Dask scheduler at {address} within {timeout_s:g} s ({exc}); start one "
            f"(`dask scheduler`, then `dask worker {address}`) or drop --dask-address / distributed.dask_address "
            "to start a LocalCluster"
        ) from None
    if not workers:
        raise WmError(f"the Dask scheduler at {address} has no workers; start some with `dask worker {address}`")
    return len(workers)
