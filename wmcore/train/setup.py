"""Building a training run from params: effective switches, stages, data, model, optimizer.

Pure set-up, no training: `wmcore.train.loop` calls these once (and `on_epoch_start` asks
`stage_of` / `fit_stage` for each epoch's crop and micro-batch). `train.naive` is resolved
here, in `resolve_switches`, so the loop itself never asks which path it is on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wmcore.config import OptimizerParams, Params
from wmcore.data.dataset import WatermarkDataset
from wmcore.data.loader import EpochSampler, distributed_rank, make_loader
from wmcore.errors import WmError
from wmcore.runtime.device import autocast_dtype
from wmcore.train.loss import SegmentationLoss
from wmcore.train.schedule import LRSchedule, Stage, stage_for_epoch
from wmcore.train.steps import StepTools

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- switches


@dataclass(frozen=True)
class Switches:
    """The optimizations in effect for this run (all off when train.naive)."""

    channels_last: bool
    compile: bool
    amp: bool
    amp_dtype: str
    grad_accum: int
    progressive: bool
    multiscale_share: float
    cache: str


def resolve_switches(params: Params, device: torch.device) -> Switches:
    t = params.train
    if t.naive:
        return Switches(False, False, False, "fp32", 1, False, 0.0, "none")
    amp = t.amp and params.base.precision != "fp32"
    if t.amp and not amp:
        log.warning("train.amp is on but base.precision is fp32: autocast stays off")
    if amp and params.base.precision == "fp16" and device.type == "cpu":
        log.warning("fp16 autocast on CPU is slow; bf16 is the CPU's reduced precision")
    return Switches(
        t.channels_last,
        t.compile,
        amp,
        params.base.precision,
        t.grad_accum_steps,
        bool(t.progressive),
        t.multiscale_share,
        params.loader.cache,
    )


def stage_of(params: Params, switches: Switches, epoch: int) -> Stage:
    """Crop and micro-batch of `epoch`; naive runs use train.crop with the whole step in one batch."""
    t = params.train
    if not switches.progressive:
        return Stage(t.crop, t.batch_size * (t.grad_accum_steps if t.naive else 1))
    return stage_for_epoch(epoch, t.progressive, Stage(t.crop, t.batch_size))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(params: Params, switches: Switches, device: torch.device) -> tuple[WatermarkDataset, DataLoader]:
    """The training set (crop set per stage) and the fixed validation batches."""
    t, p = params.train, params.paths
    train_set = WatermarkDataset(
        p.prepared,
        "train",
        stage_of(params, switches, 1).crop,
        True,
        switches.cache,
        p.cache_dir,
        switches.multiscale_share,
        params.base.seed,
        t.multiscale_min_scale,
        params.loader.uint8_batches,
        params.loader.multiscale_resize,
    )
    val_set = WatermarkDataset(p.prepared, "val", t.val_crop, False, switches.cache, p.cache_dir, seed=params.base.seed,
                               uint8=params.loader.uint8_batches)  # fmt: skip
    used = list(range(len(val_set)))
    if 0 < t.val_subset < len(val_set):  # evenly spaced: a fixed subset that spans the split
        used = np.linspace(0, len(val_set) - 1, t.val_subset).round().astype(int).tolist()
    # Each rank validates every world_size-th image (no padding: an image counted twice would skew
    # the scores); validation_step sums the counts over ranks.
    rank, world_size = distributed_rank()
    if len(used) < world_size:
        raise WmError(
            f"{len(used)} validation image(s) (train.val_subset = {t.val_subset}, split val of {p.prepared}) "
            f"for {world_size} processes: every process needs at least one; use fewer processes or more images"
        )
    sampler = EpochSampler(used[rank::world_size], params.base.seed, shuffle=False, rank=0, world_size=1)
    val_batches = make_loader(val_set, params.loader, t.val_batch_size, False, device, params.base.seed, sampler)
    return train_set, val_batches


def build_optimization(
    params: Params, switches: Switches, device: torch.device, model: nn.Module
) -> tuple[StepTools, LRSchedule]:
    """AdamW (no weight decay on norms and biases), GradScaler (fp16 only), loss, LR schedule."""
    o = params.train.optimizer
    optimizer = torch.optim.AdamW(param_groups(model, o), lr=o.lr, betas=o.betas, eps=o.eps)
    scaler = torch.amp.GradScaler(device.type, enabled=switches.amp and switches.amp_dtype == "fp16")
    tools = StepTools(
        model,
        SegmentationLoss(params.train.loss).to(device),
        optimizer,
        scaler,
        device,
        autocast_dtype(switches.amp_dtype),
        switches.amp,
        switches.channels_last,
        params.train.grad_clip,
    )
    return tools, LRSchedule(optimizer, o.lr, params.train.scheduler)


def freeze_except(model: nn.Module, prefixes: list[str]) -> tuple[int, int]:
    """Only parameters whose names start with one of `prefixes` keep requiring gradients (none given: all).

    A BatchNorm layer whose parameters are all frozen also keeps its running statistics (momentum 0).
    Returns (trainable, frozen) parameter counts; a prefix that names no parameter is a WmError.
    """
    named = list(model.named_parameters())
    if prefixes:
        unmatched = [f for f in prefixes if not any(n.startswith(f) for n, _ in named)]
        if unmatched:
            roots = sorted({n.split(".")[0] for n, _ in named})
            raise WmError(f"train.train_only: {unmatched} name no parameter of this model; its parts are {roots}")
        for name, p in named:
            p.requires_grad_(any(name.startswith(f) for f in prefixes))
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
                module.momentum = 0.0
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    return trainable, sum(p.numel() for _, p in named) - trainable


def param_groups(model: nn.Module, o: OptimizerParams) -> list[dict]:
    """AdamW groups of the parameters that require gradients: weight decay on weights only (not norms,
    biases, affine scalars); the pretrained text-detector part of a TextUNet (its `encoder_parameters`)
    at `lr_scale` = o.encoder_lr_scale."""
    pretrained = {id(p) for p in getattr(model, "encoder_parameters", list)()}
    groups = []
    for scale, part in ((1.0, False), (o.encoder_lr_scale, True)):
        params = [p for p in model.parameters() if (id(p) in pretrained) == part and p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [{"params": ps, "weight_decay": wd, "lr_scale": scale}
                   for ps, wd in ((decay, o.weight_decay), (no_decay, 0.0)) if ps]  # fmt: skip
    return groups


def scale_batchnorm_momentum(model: nn.Module, accum_steps: int) -> int:
    """Divide every BatchNorm momentum by `accum_steps`; returns how many layers changed.

    A micro-batch of N/k images updates the running statistics k times per optimizer step, each
    time with the noisier statistics of fewer images: with momentum m/k the running average spans
    the same number of images as momentum m over whole batches of N, so evaluation (which uses the
    running statistics) sees as steady a normalisation as without accumulation.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum is not None and accum_steps > 1:
            module.momentum = module.momentum / accum_steps
            changed += 1
    return changed


def place_model(model: nn.Module, switches: Switches, device: torch.device) -> nn.Module:
    model = model.to(device)
    if switches.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def maybe_compile(model: nn.Module, switches: Switches) -> nn.Module:
    """torch.compile when switched on; compilation really happens (and may fail) at the first call."""
    if not switches.compile:
        return model
    try:
        return torch.compile(model)
    except Exception as exc:  # any failure means: run eager
        log.warning("torch.compile unavailable (%s); training eager", exc)
        return model


def fit_stage(stage: Stage, accum: int, samples: int) -> Stage:
    """The stage with its micro-batch lowered when one optimizer step would need more images than there are."""
    if stage.batch_size * accum <= samples:
        return stage
    return Stage(stage.crop, max(1, samples // accum))


def samples_per_rank(params: Params, switches: Switches, stage: Stage, size: int, world_size: int) -> int:
    if params.train.steps_per_epoch:
        return params.train.steps_per_epoch * stage.batch_size * switches.grad_accum
    return -(-size // world_size)


def steps_in_epoch(params: Params, switches: Switches, size: int, epoch: int) -> int:
    """Optimizer steps of `epoch` (drop_last micro-batches; a step needs grad_accum of them)."""
    _, world_size = distributed_rank()
    stage = fit_stage(stage_of(params, switches, epoch), switches.grad_accum, -(-size // world_size))
    micro = samples_per_rank(params, switches, stage, size, world_size) // stage.batch_size
    return micro // switches.grad_accum
