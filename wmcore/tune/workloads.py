"""The short measurements `wm tune` makes: images/s of the real training step, loader and predictor.

Each function runs one candidate setting for about `seconds` after a warm-up call and returns
plain numbers. Training candidates run `wmcore.train.steps.train_step` (the loop's own step) on
synthetic batches: a convolution's cost does not depend on pixel values. Inference candidates run
`wmcore.infer.predictor` on validation images of the prepared dataset (else synthetic ones).
Accuracy checks compare a candidate's masks with fp32 torch masks of the same model: F1 of the
two masks at the reference map's own median (a 50/50 split, where any rounding shows), so an
untrained model still gives a strict answer.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from wmcore.config import Params
from wmcore.data.dataset import WatermarkDataset
from wmcore.data.loader import make_loader
from wmcore.infer.predictor import clear_predictor_cache, get_predictor
from wmcore.metrics import median_split_f1
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
from wmcore.model.factory import build_model
from wmcore.model.unet import UNet
from wmcore.train.setup import Switches, build_optimization
from wmcore.train.steps import train_step


def images_per_second(call: Callable[[], int], seconds: float, min_calls: int = 2) -> tuple[float, float]:
    """Time `call` (returns images it processed) after one warm-up call: (images/s, warm-up seconds)."""
    start = time.perf_counter()
    call()  # allocator, lazy inits, caches, compilation
    warmup_s = time.perf_counter() - start
    done, calls, start = 0, 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        done += call()
        calls += 1
    return done / (time.perf_counter() - start), warmup_s


def median_split_delta(probs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """1 - F1 of `probs` vs `reference` masks, both cut at the reference maps' median (0 = same decisions)."""
    return round(1.0 - median_split_f1(probs, reference), 4)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- models and data


def random_model(params: Params, seed: int = 0) -> UNet:
    """A random-weight UNet of params.model whose logits have median 0 and std 2 on a sample batch.

    Untrained logits are nearly constant, so every pixel would be a near-tie and any rounding
    would flip decisions; rescaling the 1x1 head keeps random weights but gives decisions a
    faithful backend must reproduce.
    """
    torch.manual_seed(seed)
    net = build_model(**params.model.model_dump()).eval()
    x, _ = synthetic_batch(2, 128, seed)
    return spread_logits(net, x)


@torch.inference_mode()
def spread_logits(net: UNet, sample: torch.Tensor) -> UNet:
    """Rescale `net`'s 1x1 head in place so its logits on `sample` (N, 3, H, W) have median 0, std 2."""
    logits = net(sample)
    scale, median = 2.0 / max(float(logits.std()), 1e-6), float(logits.median())
    net.head.weight.mul_(scale)
    net.head.bias.sub_(median).mul_(scale)
    return net


def save_random_checkpoint(params: Params, path: Path) -> Path:
    net = random_model(params)
    save_checkpoint(path, checkpoint_dict(net))
    return path


def synthetic_batch(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): float (n, 3, side, side) images in [0, 1] and (n, 1, side, side) 0/1 masks of text-like bars."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, side, side, generator=g)
    y = torch.zeros(n, 1, side, side)
    bar = max(2, side // 16)
    for i in range(n):
        top = int(torch.randint(0, side - bar, (1,), generator=g))
        rows, cols = slice(top, top + bar), slice(side // 8, side - side // 8)
        y[i, :, rows, cols] = 1.0
        x[i, :, rows, cols] = 0.5 * x[i, :, rows, cols] + 0.5  # a light, semi-transparent band
    return x, y


def tune_images(params: Params, count: int, side: int) -> list[np.ndarray]:
    """`count` uint8 (side, side, 3) images: centre crops of the prepared val split, else synthetic ones."""
    folder = Path(params.paths.prepared) / "val" / "images"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if files:
        images = []
        for path in files[:count]:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB").resize((side, side)))
            images.append(np.ascontiguousarray(rgb))
        return images
    x, _ = synthetic_batch(count, side, seed=7)
    return [np.ascontiguousarray((t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for t in x]


# --------------------------------------------------------------------------- training step


def training_tools(params: Params, model: nn.Module, channels_last: bool, precision: str, compile_model: bool):
    """StepTools for one candidate: the loop's optimizer, loss and switches around a copy of `model`.

    `precision` "fp32" = no autocast; "bf16"/"fp16" = autocast to that dtype (as train.amp does).
    """
    net = copy.deepcopy(model).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    switches = Switches(
        channels_last=channels_last, compile=compile_model, amp=precision != "fp32", amp_dtype=precision,
        grad_accum=1, progressive=False, multiscale_share=0.0, cache="none",
    )  # fmt: skip
    tools, _schedule = build_optimization(params, switches, torch.device("cpu"), net)
    if compile_model:
        tools.model = torch.compile(net)
    return tools


def train_step_rate(
    params: Params,
    model: nn.Module,
    crop: int,
    micro: int,
    accum: int,
    seconds: float,
    channels_last: bool = False,
    precision: str = "fp32",
    compile_model: bool = False,
) -> dict[str, float]:
    """Images/s of optimizer steps of `accum` micro-batches of `micro` crops; warm-up seconds (compile) too."""
    tools = training_tools(params, model, channels_last, precision, compile_model)
    x, y = synthetic_batch(micro * accum, crop)
    micro_batches = [(x[i : i + micro], y[i : i + micro]) for i in range(0, micro * accum, micro)]

    def step() -> int:
        train_step(tools, micro_batches)
        return micro * accum

    rate, warmup_s = images_per_second(step, seconds)
    return {"images_per_s": round(rate, 3), "warmup_s": round(warmup_s, 2)}


def forward_rate(model: nn.Module, side: int, seconds: float, batch: int = 1) -> float:
    """Images/s of inference forward passes of `batch` images of `side` px (eval, no grad)."""
    x, _ = synthetic_batch(batch, side)
    net = model.eval()

    def call() -> int:
        with torch.inference_mode():
            net(x)
        return batch

    return round(images_per_second(call, seconds)[0], 3)


def autocast_delta(model: nn.Module, side: int, dtype: torch.dtype) -> float:
    """1 - F1 agreement of the masks under `dtype` autocast with the fp32 masks of the same model."""
    x, _ = synthetic_batch(4, side, seed=3)
    net = model.eval()
    with torch.inference_mode():
        ref = torch.sigmoid(net(x)).float().numpy()
        with torch.autocast("cpu", dtype=dtype):
            low = torch.sigmoid(net(x)).float().numpy()
    return median_split_delta(list(low), list(ref))


# --------------------------------------------------------------------------- loader + step, predictor


def loader_step_rate(params: Params, model: nn.Module, workers: int, prefetch: int, seconds: float) -> float:
    """Images/s of the training loop's data path: the train split through make_loader, one train step per batch."""
    t, p = params.train, params.paths
    stage = t.progressive[0] if t.progressive else t
    data = WatermarkDataset(p.prepared, "train", stage.crop, True, params.loader.cache, p.cache_dir,
                            t.multiscale_share, params.base.seed, t.multiscale_min_scale,
                            params.loader.uint8_batches, params.loader.multiscale_resize)  # fmt: skip
    if workers == 0 and params.loader.cache == "ram":
        # Steady state of the loop: after the first epoch every sample is decoded in this process.
        # (Workers keep no cache between epochs unless persistent, so for them the first pass is typical.)
        for index in range(len(data)):
            data.source.get(index)
    loader_params = params.loader.model_copy(update={"workers": workers, "prefetch_factor": prefetch})
    loader = make_loader(data, loader_params, stage.batch_size, True, torch.device("cpu"), params.base.seed)
    tools = training_tools(params, model, t.channels_last, "fp32", False)
    batches = _endless(loader)

    def step() -> int:
        x, y = next(batches)
        train_step(tools, [(x, y)])
        return len(x)

    try:
        return round(images_per_second(step, seconds)[0], 3)
    finally:
        batches.close()  # ends the loader's worker processes


def _endless(loader) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def predictor_rate(
    params: Params,
    model_path: Path,
    backend: str,
    images: list[np.ndarray],
    batch: int,
    seconds: float,
    int8_calibration: list[Path] | None = None,
) -> tuple[float, list[np.ndarray]]:
    """(images/s, probability maps) of `backend` predicting `images` in fixed batches of `batch`.

    `int8_calibration`: image files for onnx-int8 when the prepared val split is absent.
    """
    pp = params.predict.model_copy(update={"batch_size": batch, "min_batch_size": 1, "max_batch_size": batch,
                                           "auto_batch": False})  # fmt: skip
    run_params = params.model_copy(update={"predict": pp})
    clear_predictor_cache()  # a fresh predictor per candidate: no cached batch sizer or arena
    predictor = get_predictor(str(model_path), run_params, backend, int8_calibration=int8_calibration)
    probs: list[np.ndarray] = []

    def call() -> int:
        probs.clear()
        for i in range(0, len(images), batch):
            probs.extend(predictor.predict(images[i : i + batch]))
        return len(images)

    rate, _ = images_per_second(call, seconds)
    clear_predictor_cache()
    return round(rate, 3), [p.copy() for p in probs]
