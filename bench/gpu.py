"""GPU micro-benchmarks: the CUDA switches of training and inference, measured against the naive path.

Run by `bench/gpu.sh` on a CUDA machine (it also runs here on a CPU with tiny sizes, as a smoke
check of the script itself). Every figure goes through the project's own code paths:

    train     `train_step` with the tools `build_optimization` makes from params: naive (fp32,
              NCHW, eager) vs channels_last vs AMP bf16 vs AMP fp16 + GradScaler vs bf16 +
              torch.compile. Batches are made on the device, so images/s is the model's step
              rate (the loader is measured by the real training run that follows).
    infer     `TorchBackend.run` on uint8 tiles (host -> device copy and back included): naive
              (fp32 NCHW, batch 1) vs batched fp32/bf16/fp16 channels_last, pinned+non_blocking
              vs pageable copies, and a batch-size sweep.
    adaptive  `Predictor` with auto_batch from a small start under a per-process memory cap:
              the sizer grows towards the cap; sizes and back-offs are reported.
    oom       a real CUDA out-of-memory provoked (a start batch far above a small memory cap)
              and survived: every image finishes, outputs equal a small-batch reference.
    recipe    the training loop's own model step: the model, precision, memory format, compile and
              accumulation of the params files given with --recipe, at each progressive stage's crop
              and micro-batch, batches already on the device. The ceiling the real loop is held to
              (#14: at least 90% of it; bench/loop_efficiency.py compares the run's history.json).

Writes one JSON file (--out) and its tables beside it (.md; `--report` remakes them from the JSON alone).
Usage: python bench/gpu.py --out gpu.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.config import Params, load_params  # noqa: E402
from wmcore.infer.predictor import get_predictor  # noqa: E402
from wmcore.infer.torch_backend import TorchBackend  # noqa: E402
from wmcore.model import build_model  # noqa: E402
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint  # noqa: E402
from wmcore.runtime.machine import machine_info  # noqa: E402
from wmcore.runtime.memory import MemoryMonitor  # noqa: E402
from wmcore.train.setup import (  # noqa: E402
    Switches,
    build_optimization,
    maybe_compile,
    place_model,
    resolve_switches,
)
from wmcore.train.steps import train_step  # noqa: E402

TRAIN_VARIANTS = {  # name -> params overrides (train group + base.precision)
    "naive": {"train.naive": True},
    "channels_last": {"train.channels_last": True},
    "amp_bf16_cl": {"train.channels_last": True, "train.amp": True, "base.precision": "bf16"},
    "amp_fp16_cl": {"train.channels_last": True, "train.amp": True, "base.precision": "fp16"},
    "amp_bf16_cl_compile": {
        "train.channels_last": True,
        "train.amp": True,
        "base.precision": "bf16",
        "train.compile": True,
    },  # fmt: skip
}
INFER_VARIANTS = {  # name -> (batch, channels_last, amp, precision, non_blocking)
    "naive_fp32_bs1": (1, False, False, "fp32", False),
    "fp32_cl": (None, True, False, "fp32", True),
    "bf16_cl": (None, True, True, "bf16", True),
    "fp16_cl": (None, True, True, "fp16", True),
    "bf16_cl_pageable": (None, True, True, "bf16", False),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_index(device: torch.device) -> int:
    """The CUDA ordinal of `device` ("cuda" alone means the current one; some calls need the number)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def peak_mb(device: torch.device) -> float:
    """The CUDA allocator's peak since reset_peak (MemoryMonitor's figure); NaN on a CPU smoke run."""
    return MemoryMonitor(device).peak_mb() if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the previous variant's cached blocks must not crowd the next one
        MemoryMonitor(device).reset_peak()


def time_train_steps(params: Params, switches: Switches, device: torch.device, x: torch.Tensor, y: torch.Tensor,
                     warmup: int, steps: int, micro: int = 1) -> dict[str, Any]:  # fmt: skip
    """`train_step` on one batch (x, y) repeated as `micro` accumulated micro-batches, with the tools the training
    loop builds from `params`: images/s and ms per step after `warmup` steps (compile, cuDNN autotuning), peak MB."""
    reset_peak(device)
    torch.manual_seed(0)
    model = place_model(build_model(**params.model.model_dump()), switches, device)
    tools, _ = build_optimization(params, switches, device, model)
    tools.model = maybe_compile(model, switches)
    batches = [tools.to_device((x, y))] * micro
    started = time.perf_counter()
    for _ in range(warmup):
        train_step(tools, batches)
    sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        result = train_step(tools, batches)
    sync(device)
    seconds = time.perf_counter() - started
    return {
        "images_per_s": round(steps * micro * x.shape[0] / seconds, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "warmup_s": round(warm_s, 2),
        "peak_mb": round(peak_mb(device), 1),
        "final_loss": round(float(result["loss"]), 4),
    }


def bench_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Optimizer steps/s and peak memory per training variant, same model size, batch and crop."""
    out: dict[str, Any] = {"batch": args.train_batch, "crop": args.crop, "steps": args.steps}
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.train_batch, 3, args.crop, args.crop, generator=gen)
    y = (torch.rand(args.train_batch, 1, args.crop, args.crop, generator=gen) > 0.9).float()
    for name, overrides in TRAIN_VARIANTS.items():
        if ("compile" in name and args.no_compile) or (args.train_variants and name not in args.train_variants):
            continue
        params = load_params(ROOT / "params.yaml", overrides={**args.model_overrides, **overrides})
        out["arch"] = params.model.arch
        out[name] = time_train_steps(params, resolve_switches(params, device), device, x, y, args.warmup, args.steps)
        print(f"train {name}: {out[name]}", flush=True)
    naive = out.get("naive", {}).get("images_per_s")
    for name in TRAIN_VARIANTS:
        if naive and name in out:
            out[name]["speedup_vs_naive"] = round(out[name]["images_per_s"] / naive, 2)
            out[name]["memory_vs_naive"] = round(out[name]["peak_mb"] / out["naive"]["peak_mb"], 3)
    return out


def bench_recipe(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of `train_step` as the training loop runs it (its params files), per progressive stage."""
    overrides = ["tracking.enabled=false", "base.device=auto", *args.set]  # --set: the run's own -S overrides
    params = load_params(ROOT / "params.yaml", overrides=overrides, extra_files=args.recipe)
    switches = resolve_switches(params, device)
    t = params.train
    stages = [(s.crop, s.batch_size) for s in t.progressive] if switches.progressive else [(t.crop, t.batch_size)]
    out: dict[str, Any] = {"recipe": [str(f) for f in args.recipe], "arch": params.model.arch,
                           "precision": switches.amp_dtype if switches.amp else "fp32",
                           "channels_last": switches.channels_last, "compile": switches.compile,
                           "grad_accum": switches.grad_accum, "steps": args.steps, "stages": []}  # fmt: skip
    for crop, batch in stages:
        gen = torch.Generator().manual_seed(crop)
        x = torch.rand(batch, 3, crop, crop, generator=gen)
        y = (torch.rand(batch, 1, crop, crop, generator=gen) > 0.9).float()
        timed = time_train_steps(params, switches, device, x, y, args.warmup, args.steps, switches.grad_accum)
        row = {"crop": crop, "batch": batch, **{k: timed[k] for k in ("images_per_s", "step_ms", "peak_mb")}}
        out["stages"].append(row)
        print(f"recipe step {row}", flush=True)
    return out


def make_tiles(n: int, side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def run_backend(backend: TorchBackend, tiles: np.ndarray, batch: int, device: torch.device) -> float:
    """Seconds to run all `tiles` through `backend` in batches of `batch` (results back on the host)."""
    sync(device)
    started = time.perf_counter()
    for i in range(0, len(tiles), batch):
        backend.run(tiles[i : i + batch])
    sync(device)
    return time.perf_counter() - started


def bench_infer(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s and peak memory of TorchBackend per variant, plus a batch-size sweep (bf16 channels_last)."""
    params = load_params(ROOT / "params.yaml", overrides=args.model_overrides)
    tiles = make_tiles(args.infer_images, args.tile)
    out: dict[str, Any] = {"tile": args.tile, "images": args.infer_images, "batch": args.infer_batch}
    for name, (batch, cl, amp, precision, non_blocking) in INFER_VARIANTS.items():
        if amp and device.type != "cuda":
            continue  # TorchBackend uses autocast on CUDA only
        batch = batch or args.infer_batch
        torch.manual_seed(0)
        backend = TorchBackend(build_model(**params.model.model_dump()), device, cl, amp, precision, non_blocking)
        run_backend(backend, tiles[: 2 * batch], batch, device)  # warm-up: cuDNN algorithm choice
        reset_peak(device)
        seconds = run_backend(backend, tiles, batch, device)
        out[name] = {
            "batch": batch,
            "images_per_s": round(len(tiles) / seconds, 1),
            "peak_mb": round(peak_mb(device), 1),
        }
        print(f"infer {name}: {out[name]}", flush=True)
        del backend
    naive = out.get("naive_fp32_bs1", {}).get("images_per_s")
    for name in INFER_VARIANTS:
        if naive and name in out:
            out[name]["speedup_vs_naive"] = round(out[name]["images_per_s"] / naive, 2)
    amp = device.type == "cuda"
    backend = TorchBackend(build_model(**params.model.model_dump()), device, True, amp, "bf16", True)
    sweep = {}
    for batch in args.sweep:
        run_backend(backend, tiles[:batch], batch, device)
        reset_peak(device)
        n = max(batch * 2, min(len(tiles), batch * 8))
        reps = np.concatenate([tiles] * (-(-n // len(tiles))))[:n]
        seconds = run_backend(backend, reps, batch, device)
        sweep[str(batch)] = {"images_per_s": round(n / seconds, 1), "peak_mb": round(peak_mb(device), 1)}
        print(f"infer sweep batch {batch}: {sweep[str(batch)]}", flush=True)
    out["batch_sweep_bf16_cl" if amp else "batch_sweep_fp32_cl"] = sweep
    return out


def capped_predictor(args: argparse.Namespace, device: torch.device, cap: float, start: int, max_batch: int):
    """A Predictor (random-weight checkpoint) with auto_batch under a per-process CUDA memory cap."""

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap, cuda_index(device))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "random.pt"
    if not ckpt.exists():
        params = load_params(ROOT / "params.yaml", overrides=args.model_overrides)
        torch.manual_seed(0)
        model = build_model(**params.model.model_dump())
        save_checkpoint(ckpt, checkpoint_dict(model))
    overrides = {
        **args.model_overrides,
        "predict.auto_batch": True, "predict.batch_size": start, "predict.max_batch_size": max_batch,
        "predict.tile_size": args.tile, "predict.tile_overlap": args.tile // 8, "predict.amp": True, "base.precision": "bf16",
        "paths.cache_dir": str(work / f"cache-{cap}-{start}"), "predict.memory_threshold": 0.85,
        "predict.enlarge_below": 0,  # tiles run as given: the OOM check compares them with the backend's batch 1
    }  # fmt: skip
    return get_predictor(ckpt, load_params(ROOT / "params.yaml", overrides=overrides))


def bench_adaptive(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Growth of the batch size towards a memory cap (and back-off when a step crosses it)."""
    predictor = capped_predictor(args, device, args.adaptive_cap, start=4, max_batch=args.adaptive_max)
    images = list(make_tiles(args.adaptive_images, args.tile, seed=1))
    started = time.perf_counter()
    maps = predictor.predict(images)
    seconds = time.perf_counter() - started
    out = {
        "memory_cap_fraction": args.adaptive_cap,
        "images": len(images),
        "outputs": len(maps),
        "images_per_s": round(len(images) / seconds, 1),
        **predictor.sizer.summary(),
        "peak_mb": round(peak_mb(device), 1),
    }
    print(f"adaptive: {out}", flush=True)
    return out


def bench_oom(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """A real OOM: start far above what the cap holds; every image must come back, equal to a reference."""
    images = list(make_tiles(args.oom_images, args.tile, seed=2))
    predictor = capped_predictor(args, device, args.oom_cap, start=args.oom_start, max_batch=args.oom_start)
    started = time.perf_counter()
    maps = predictor.predict(images)
    seconds = time.perf_counter() - started
    summary = predictor.sizer.summary()
    ref_backend = predictor.backend
    reference = [ref_backend.run(np.stack([im]))[0] for im in images[:4]]  # batch 1: no OOM possible
    diff = max(float(np.abs(m - r).max()) for m, r in zip(maps[:4], reference, strict=True))
    out = {
        "memory_cap_fraction": args.oom_cap,
        "start_batch": args.oom_start,
        "images": len(images),
        "outputs": len(maps),
        "lost": len(images) - len(maps),
        "max_abs_diff_vs_batch1": round(diff, 5),
        "seconds": round(seconds, 2),
        **summary,
    }
    print(f"oom: {out}", flush=True)
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0, cuda_index(device))
    return out


def markdown_report(results: dict[str, Any]) -> str:
    """The results as markdown tables: training and inference variants vs naive, batch sweep, OOM runs."""
    env = results.get("environment", {})
    lines = [f"# GPU benchmark: {env.get('gpu', env.get('device'))}",
             "", f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python {env.get('python')}"]  # fmt: skip
    train = results.get("train", {})
    if any(isinstance(v, dict) for v in train.values()):
        lines += ["", f"## Training step ({train.get('arch', 'unet')}, batch {train.get('batch')}, crop {train.get('crop')} px, data on the device)",
                  "", "| variant | images/s | vs naive | peak MB | vs naive | warm-up s |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in train.items():
            if isinstance(r, dict) and "images_per_s" in r:
                lines.append(f"| {name} | {r['images_per_s']} | {r.get('speedup_vs_naive', '-')} | {r['peak_mb']} | "
                             f"{r.get('memory_vs_naive', '-')} | {r['warmup_s']} |")  # fmt: skip
    infer = results.get("infer", {})
    if any(isinstance(v, dict) and "images_per_s" in v for v in infer.values()):
        lines += ["", f"## Inference (TorchBackend, {infer.get('tile')} px tiles, host uint8 in and float maps out)",
                  "", "| variant | batch | images/s | vs naive | peak MB |", "|---|---|---|---|---|"]  # fmt: skip
        for name, r in infer.items():
            if isinstance(r, dict) and "images_per_s" in r:
                lines.append(
                    f"| {name} | {r['batch']} | {r['images_per_s']} | {r.get('speedup_vs_naive', '-')} | {r['peak_mb']} |"
                )
        for key in ("batch_sweep_bf16_cl", "batch_sweep_fp32_cl"):
            if key in infer:
                lines += ["", f"Batch sweep ({key}): " + ", ".join(
                    f"batch {b}: {r['images_per_s']} img/s, {r['peak_mb']} MB" for b, r in infer[key].items())]  # fmt: skip
    recipe = results.get("recipe", {})
    if recipe.get("stages"):
        lines += ["", f"## The training loop's model step ({' + '.join(recipe['recipe']) or 'params.yaml'}: "
                  f"{recipe['arch']}, {recipe['precision']}, channels_last {recipe['channels_last']}, "
                  f"accumulation {recipe['grad_accum']}; data on the device)",
                  "", "| crop | micro-batch | images/s | step ms | peak MB |", "|---|---|---|---|---|",
                  *[f"| {r['crop']} | {r['batch']} | {r['images_per_s']} | {r['step_ms']} | {r['peak_mb']} |"
                    for r in recipe["stages"]]]  # fmt: skip
    for name in ("adaptive", "oom"):
        r = results.get(name)
        if isinstance(r, dict) and "images" in r:
            lines += ["", f"## {name}", "", "| " + " | ".join(r) + " |", "|" + "---|" * len(r),
                      "| " + " | ".join(str(v) for v in r.values()) + " |"]  # fmt: skip
    return "\n".join(lines) + "\n"


SECTIONS = {"train": bench_train, "infer": bench_infer, "adaptive": bench_adaptive, "oom": bench_oom,
            "recipe": bench_recipe}  # fmt: skip


def environment(device: torch.device) -> dict[str, Any]:
    m = machine_info()
    env: dict[str, Any] = {"torch": m["torch"], "python": m["python"], "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_mb=props.total_memory // 2**20, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())  # fmt: skip
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check of this script on a CPU")
    ap.add_argument("--base-width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--work", default="/tmp/wm-gpu-bench", help="scratch folder")
    ap.add_argument("--no-compile", action="store_true", help="leave the torch.compile training variant out")
    ap.add_argument("--train-variants", nargs="+", choices=list(TRAIN_VARIANTS), default=None, help="subset")
    ap.add_argument("--recipe", nargs="*", type=Path, default=[],
                    help="recipe section: params files merged over params.yaml, as the training run merges them")
    ap.add_argument("--report", action="store_true", help="only write --out's markdown tables from its JSON")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe section: overrides after the files, as the training run's -S")
    args = ap.parse_args(argv)
    big = not args.quick
    args.crop, args.train_batch = (256, 64) if big else (64, 2)
    args.steps, args.warmup = (30, 5) if big else (2, 1)
    args.tile, args.infer_batch, args.infer_images = (512, 32, 256) if big else (128, 2, 4)
    args.sweep = [1, 8, 32, 128] if big else [1, 2]
    args.adaptive_cap, args.adaptive_max, args.adaptive_images = (0.25, 1024, 2048) if big else (1.0, 4, 6)
    args.oom_cap, args.oom_start, args.oom_images = (0.05, 512, 600) if big else (1.0, 4, 5)
    args.model_overrides = {"model.base_width": args.base_width, "model.depth": args.depth,
                            "tracking.enabled": False, "base.device": "auto"}  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:  # the tables of an earlier run's JSON (bench/gpu.sh sends the markdown back in log.txt)
        args.out.with_suffix(".md").write_text(markdown_report(json.loads(args.out.read_text())))
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    results: dict[str, Any] = {"environment": environment(device), "quick": args.quick}
    for name in args.sections:
        started = time.perf_counter()
        try:
            results[name] = SECTIONS[name](args, device)
        except Exception as exc:  # one failed section must not lose the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["section_s"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(results, indent=2))  # after each section: a timeout keeps what finished
    args.out.with_suffix(".md").write_text(markdown_report(results))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
