"""DataLoader factory and the epoch-keyed sampler that makes batches reproducible.

`EpochSampler` yields keys (index, epoch, repeat) instead of bare indices. The order of an
epoch depends only on (seed, epoch) and the dataset derives each sample's augmentation from
the key, so a batch is the same whatever the worker count, with persistent workers (which
never see attribute changes made in the main process after they start), and after a resume
(which only needs the epoch number). With torch.distributed, each rank takes every
world_size-th key of the same global order (rank and world size from the RANK/WORLD_SIZE
environment, as torchrun sets them).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wmcore.config import LoaderParams


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from the environment torchrun sets; (0, 1) for a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class EpochSampler(Sampler):
    """Keys (index, epoch, repeat) of one epoch, for this rank.

    Args:
        population: number of samples in the dataset, or the dataset indices to draw from
            (a fixed subset, e.g. the validation images used during training).
        seed: base seed of the order.
        shuffle: random order per epoch (else 0, 1, 2, ...).
        num_samples: keys this rank yields per epoch; more than one pass goes on with a fresh
            order (repeat = 1, 2, ...). Default: one pass split between the ranks.
        rank, world_size: this process's share (default from the environment).
    """

    def __init__(
        self,
        population: int | Sequence[int],
        seed: int = 0,
        shuffle: bool = True,
        num_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        env_rank, env_world = distributed_rank()
        self.indices = np.arange(population) if isinstance(population, int) else np.asarray(population, dtype=int)
        self.size, self.seed, self.shuffle = len(self.indices), seed, shuffle
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.num_samples = num_samples or -(-self.size // self.world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, repeat: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, self.epoch, repeat]).permutation(self.size)]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        wanted = self.num_samples * self.world_size
        position = 0
        for repeat in range(-(-wanted // self.size)):
            for index in self._order(repeat):
                if position >= wanted:
                    return
                if position % self.world_size == self.rank:
                    yield int(index), self.epoch, repeat
                position += 1

    def __len__(self) -> int:
        return self.num_samples


def seed_worker(worker_id: int) -> None:
    """Loader worker start: seed numpy/random from torch's per-worker seed; one torch thread.

    Samples do not draw from these global generators (their randomness is keyed), but library
    code might. One intra-op thread per worker keeps workers from fighting the training step
    for cores.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    loader_params: LoaderParams,
    batch_size: int,
    shuffle: bool,
    device: torch.device,
    seed: int,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with the options of `loader_params` that apply to this device.

    Pinned memory only on CUDA (it only speeds host-to-GPU copies); persistent workers and
    prefetching only with workers > 0 (torch refuses them otherwise). Without `sampler`, an
    `EpochSampler(len(dataset), seed, shuffle)` is used; call `loader.sampler.set_epoch(e)`
    before each epoch.
    """
    workers = loader_params.workers
    options: dict = {}
    if workers > 0:
        options = {
            "persistent_workers": loader_params.persistent_workers,
            "prefetch_factor": loader_params.prefetch_factor,
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else EpochSampler(len(dataset), seed=seed, shuffle=shuffle),
        num_workers=workers,
        pin_memory=loader_params.pin_memory and device.type == "cuda",
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=seed_worker,
        **options,
    )
