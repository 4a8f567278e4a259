"""The sections of `wm bench` (bench/suite.py): each returns {"rows", "figures", "notes", ...}.

Training and inference run the existing benches, bench/train.py and bench/infer.py, through
their command lines (each already runs every variant in its own process, so peak memory is that
variant's alone) and read their JSON; this module only adds the verdicts. Data loading, the
pipeline overhead and thread contention are measured here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.suite_context import QUIET_ENV, ROOT, TARGETS, Figure, SuiteContext
from bench.suite_costs import contention, overhead
from wmcore.config import LoaderParams
from wmcore.data.dataset import WatermarkDataset, as_float
from wmcore.data.loader import make_loader
from wmcore.errors import WmError
from wmcore.infer.predictor import resolve_model

SCRIPT_TIMEOUT_S = 7200.0


def run_bench_script(script: str, args: list[str], out_json: Path, timeout: float = SCRIPT_TIMEOUT_S) -> dict:
    """Run bench/<script> with `args`; returns the JSON it wrote to `out_json` (RuntimeError with its stderr if not)."""
    env = {**os.environ, **QUIET_ENV, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "bench" / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0 or not out_json.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"bench/{script} failed (exit {proc.returncode}): {' | '.join(tail)[:600]}")
    return json.loads(out_json.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- dataload


def pss_mb(include_children: bool = True) -> float:
    """Memory of this process and its loader workers, MiB: PSS (shared pages split), else RSS."""
    import psutil

    procs = [psutil.Process()]
    if include_children:
        procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.Error, OSError):
            continue
    return total / 2**20


def loader_pass(loader: Any, epoch: int, device: Any) -> tuple[float, int, float]:
    """One pass over `loader`, each batch moved to `device` and made float there as the training step does
    (uint8 batches pay their conversion here): (seconds, images, largest memory sampled in it, MiB)."""
    loader.sampler.set_epoch(epoch)
    images, peak, start = 0, 0.0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        x, _ = as_float(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        images += len(x)
        if i % 4 == 0:
            peak = max(peak, pss_mb())
    return time.perf_counter() - start, images, peak


def measure_loader(
    prepared: Path, cache_dir: Path, cache: str, workers: int, pin: bool, sizes: dict, uint8: bool = False,
    resize: str = "pil",
) -> dict:
    """images/s of the training data path for one (cache, workers, pin_memory, uint8 batches, multiscale resize):
    first pass and steady pass."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    data = WatermarkDataset(prepared, "train", sizes["crop"], True, cache, cache_dir, 0.5, 0, uint8=uint8, resize=resize)
    build_s = time.perf_counter() - start  # mmap writes its cache file here
    lp = LoaderParams(workers=workers, prefetch_factor=2, pin_memory=pin, persistent_workers=False, cache=cache,
                      uint8_batches=uint8)  # fmt: skip
    loader = make_loader(data, lp, sizes["batch"], True, device, 0)
    first_s, n, _ = loader_pass(loader, 0, device)
    steady_s, n2, peak = 1e-9, 0, 0.0
    for epoch in range(1, sizes["passes"]):
        s, k, m = loader_pass(loader, epoch, device)
        steady_s, n2, peak = steady_s + s, n2 + k, max(peak, m)
    return {
        "cache": cache,
        "workers": workers,
        "pin_memory": pin,
        "uint8_batches": uint8,
        "multiscale_resize": resize,
        "build_s": round(build_s, 2),
        "first_pass_images_per_s": round(n / first_s, 1),
        "images_per_s": round(n2 / steady_s, 1),
        "peak_pss_mb": round(peak, 1),
    }


def device_name() -> str:
    import torch

    return "the GPU" if torch.cuda.is_available() else "the CPU"


def section_dataload(ctx: SuiteContext) -> dict[str, Any]:
    import torch

    sz, prepared = ctx.sizes, ctx.prepared()
    rows = [
        measure_loader(prepared, ctx.work / "cache", cache, w, pin, sz)
        for cache in ("none", "ram", "mmap")
        for w in sz["loader_workers"]
        for pin in sz["pin"]
    ]
    # uint8 batches (loader.uint8_batches) beside the mmap rows: the GPU profile's cache, shared by workers
    rows += [measure_loader(prepared, ctx.work / "cache", "mmap", w, pin, sz, uint8=True)
             for w in sz["loader_workers"] for pin in sz["pin"]]  # fmt: skip
    naive = rows[0]  # no cache, no workers, no pinning, float batches
    best = max(rows, key=lambda r: r["images_per_s"])
    ram0 = next(r for r in rows if r["cache"] == "ram" and r["workers"] == 0)
    most = max(sz["loader_workers"])
    as_float32, as_uint8 = (next(r for r in rows if r["cache"] == "mmap" and r["workers"] == most
                                 and r["uint8_batches"] == u) for u in (False, True))  # fmt: skip
    figures = [
        Figure(
            "dataload",
            "best loader / naive loader (steady pass)",
            round(best["images_per_s"] / naive["images_per_s"], 2),
            detail=f"{best['cache']} cache, {best['workers']} workers, pin {best['pin_memory']}, "
            f"uint8 {best['uint8_batches']}: "
            f"{best['images_per_s']} vs {naive['images_per_s']} img/s",
        ),
        Figure(
            "dataload",
            "ram cache / no cache (0 workers, steady pass)",
            round(ram0["images_per_s"] / naive["images_per_s"], 2),
            detail=f"{ram0['images_per_s']} vs {naive['images_per_s']} img/s",
        ),
        Figure(
            "dataload",
            f"uint8 / float32 batches (mmap cache, {most} workers, steady pass)",
            round(as_uint8["images_per_s"] / as_float32["images_per_s"], 2),
            detail=f"{as_uint8['images_per_s']} vs {as_float32['images_per_s']} img/s, made float on {device_name()}",
        ),
    ]
    notes = [
        f"{sz['n_train']} training images at crop {sz['crop']}, batch {sz['batch']}, {sz['passes']} passes; "
        "images/s of the last passes (the first pass fills the caches and is shown apart); "
        "memory = PSS of the process and its workers."
    ]
    if not torch.cuda.is_available():
        notes.append(
            "pin_memory only speeds host-to-GPU copies; make_loader turns it off on CPU, so its rows "
            "measure the same loader twice (recorded as asked)."
        )
    return {"rows": rows, "figures": figures, "notes": notes}


# --------------------------------------------------------------------------- train and infer


def section_train(ctx: SuiteContext) -> dict[str, Any]:
    out = ctx.work / "train"
    args = [*ctx.sizes["train_args"], "--prepared", str(ctx.prepared()), "--out", str(out)]
    r = run_bench_script("train.py", args, out / "train.json")
    c, n, o = r["comparison"], r["naive"], r["optimized"]
    figures = [
        Figure(
            "train",
            "throughput optimized / naive",
            c["throughput_ratio"],
            better="higher",
            plan="training",
            target=TARGETS["training_speedup"],
            detail=f"{n['images_per_s']:.2f} -> {o['images_per_s']:.2f} img/s",
        ),
        Figure(
            "train",
            "peak memory optimized / naive",
            c["peak_memory_ratio"],
            better="lower",
            plan="memory",
            target=TARGETS["peak_memory_ratio"],
            detail=f"{n['peak_rss_mb']:.0f} -> {o['peak_rss_mb']:.0f} MiB RSS",
        ),
        Figure(
            "train",
            "val F1 difference at equal steps",
            round(abs(c["f1_delta"]), 4),
            unit="F1",
            better="lower",
            target=r["targets"]["f1_abs_delta_max"],
            detail=f"{n['final_val_f1_best']:.4f} vs {o['final_val_f1_best']:.4f} (best threshold)",
        ),
    ]
    rows = [
        {
            "variant": name,
            "images_per_s": v["images_per_s"],
            "peak_rss_mb": v["peak_rss_mb"],
            "val_f1_best": v["final_val_f1_best"],
            "wall_s": v["wall_s"],
        }
        for name, v in (("naive", n), ("optimized", o))
    ]
    cfg = r["config"]
    notes = [
        f"bench/train.py: {cfg['steps']} optimizer steps of {cfg['micro'] * cfg['accum']} images at "
        f"{cfg['crop']} px; optimized switches {json.dumps(o.get('switches', {}))}."
    ]
    return {"rows": rows, "figures": figures, "notes": notes}


def trained_model_args(ctx: SuiteContext) -> list[str]:
    """--checkpoint/--test-split of the pipeline's trained model and test split, when both exist (full runs)."""

    test = Path(ctx.params.paths.prepared) / "test"
    if not ctx.sizes["trained_model"] or not (test / "images").is_dir() or not (test / "masks").is_dir():
        return []
    try:
        return ["--checkpoint", str(resolve_model(None, ctx.params).path), "--test-split", str(test)]
    except WmError:
        return []


def inference_f1_delta(config: dict[str, Any], naive: dict[str, Any]) -> tuple[float | None, str]:
    """|F1 - naive F1| against ground truth when bench/infer.py had masks, else 1 - F1 agreement with naive masks."""
    q, nq = config.get("quality", {}), naive.get("quality", {})
    if "f1" in q and "f1" in nq:
        return round(abs(q["f1"] - nq["f1"]), 4), f"F1 {q['f1']} vs naive {nq['f1']} (ground truth)"
    if "f1_vs_naive" in q:
        return round(1.0 - q["f1_vs_naive"], 4), f"mask F1 vs naive masks {q['f1_vs_naive']}"
    return None, "no quality figure"


def section_infer(ctx: SuiteContext) -> dict[str, Any]:
    out = ctx.work / "infer"
    configs = ["naive", "torch", "onnx", "onnx_int8"] + ([] if ctx.quick else ["naive_reload"])
    args = [
        *ctx.sizes["infer_args"],
        "--configs",
        *configs,
        "--no-flatness",
        "--out",
        str(out),
        "--work",
        str(ctx.work / "infer-scratch"),
        *trained_model_args(ctx),
    ]
    r = run_bench_script("infer.py", args, out / "infer.json")
    cfgs, naive = r["configs"], r["configs"].get("naive", {})
    figures, tolerance = [], ctx.params.tune.max_f1_delta
    for name in ("torch", "onnx", "onnx_int8"):
        c = cfgs.get(name, {})
        if "speedup" not in c:
            figures.append(Figure("infer", f"{name} throughput / naive", None, detail=c.get("error", "not run")))
            continue
        figures.append(
            Figure(
                "infer",
                f"{name} throughput / naive",
                c["speedup"],
                better="higher",
                plan="inference",
                target=TARGETS["inference_speedup"],
                detail=f"{naive['images_per_s']} -> {c['images_per_s']} img/s",
            )
        )
        delta, how = inference_f1_delta(c, naive)
        figures.append(
            Figure("infer", f"{name} F1 delta vs naive", delta, unit="F1", better="lower", target=tolerance, detail=how)
        )
    figures += equal_work_figures(r.get("equal_work_memory") or {}, cfgs)
    rows = [
        {"config": k, **{f: v.get(f) for f in ("images_per_s", "speedup", "peak_rss_mb", "work_mb", "error")}}
        for k, v in cfgs.items()
    ]
    s = r["setup"]
    notes = [f"bench/infer.py: {s['images']} images of {s['size']} px, model {s['model']}, {s['threads']} threads."]
    return {"rows": rows, "figures": figures, "notes": notes, "verdicts_infer_py": r.get("verdicts", {})}


def equal_work_figures(equal_work: dict[str, Any], small: dict[str, Any]) -> list[Figure]:
    """Peak memory of tiled torch vs whole-image naive: on large images when measured, else on the small ones (info)."""
    groups = equal_work.get("configs", {})
    n, t = groups.get("naive", {}), groups.get("torch", {})
    if "peak_rss_mb" in n and "peak_rss_mb" in t:
        return [
            Figure(
                "infer",
                f"peak memory torch / naive, {equal_work['size']} px",
                round(t["peak_rss_mb"] / n["peak_rss_mb"], 3),
                better="lower",
                plan="memory",
                target=TARGETS["peak_memory_ratio"],
                detail=f"{n['peak_rss_mb']} -> {t['peak_rss_mb']} MB RSS; work {n['work_mb']} -> {t['work_mb']} MB",
            )
        ]
    n, t = small.get("naive", {}), small.get("torch", {})
    if "peak_rss_mb" in n and "peak_rss_mb" in t:
        return [
            Figure(
                "infer",
                "peak memory torch / naive, small images",
                round(t["peak_rss_mb"] / n["peak_rss_mb"], 3),
                detail=f"{n['peak_rss_mb']} -> {t['peak_rss_mb']} MB RSS",
            )
        ]
    return []


# --------------------------------------------------------------------------- oom and scaling


def flatness_run(ctx: SuiteContext) -> dict[str, Any]:
    """bench/infer.py's whole-pipeline runs (counts, sizes, OOM demo), once for the oom and scaling sections."""
    if "flatness" not in ctx.cache:
        sz, scaling = ctx.sizes, "scaling" in ctx.selected
        out = ctx.work / "flat"
        args = [
            "--configs",
            "naive",
            "--images",
            "1",
            "--size",
            "128",
            "--mem-images",
            "0",
            "--flat-counts",
            *(map(str, sz["flat_counts"]) if scaling else []),
            "--flat-count-size",
            str(sz["flat_count_size"]),
            "--flat-sizes",
            *(sz["flat_sizes"] if scaling else []),
            "--oom-images",
            str(sz["oom_images"]),
            "--out",
            str(out),
            "--work",
            str(ctx.work / "flat-scratch"),
        ]
        ctx.cache["flatness"] = run_bench_script("infer.py", args, out / "infer.json").get("flatness", {})
    return ctx.cache["flatness"]


def section_oom(ctx: SuiteContext) -> dict[str, Any]:
    demo = flatness_run(ctx).get("oom_backoff_demo", {})
    if "processed" not in demo:
        raise RuntimeError(f"OOM back-off demo did not run: {demo.get('error', 'no result')}")
    kept = round(demo["processed"] / max(1, demo["images"]), 4)
    figures = [
        Figure(
            "oom",
            "images kept under a too-small memory budget",
            kept,
            unit="fraction",
            better="higher",
            target=TARGETS["images_kept"],
            detail=f"{demo['processed']}/{demo['images']} images, budget {demo.get('host_memory_budget_mb')} MB",
        ),
        Figure(
            "oom",
            "batches backed off and retried",
            float(demo["batch_backoffs"] or 0),
            unit="batches",
            detail=f"final batch {demo['batch_size_final']}, batch success rate {demo['batch_success_rate']}",
        ),
    ]
    notes = [
        "Batches start at 4 tiles under a host memory budget that fits one: each over-budget batch is "
        "halved and retried (AdaptiveBatchSizer), so no image is lost."
    ]
    return {"rows": [demo], "figures": figures, "notes": notes}


def scaling_curves(flat: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{"count": [...], "side": [...]}: images, side, wall s, peak RSS and work beyond image buffers of each run."""
    curves: dict[str, list[dict[str, Any]]] = {"count": [], "side": []}
    for name, r in flat.items():
        if not isinstance(r, dict) or "peak_rss_mb" not in r or not r.get("images_per_s"):
            continue
        point = {
            "run": name,
            "images": r["images"],
            "wall_s": round(r["processed"] / r["images_per_s"], 2),
            "peak_rss_mb": r["peak_rss_mb"],
            "work_beyond_buffers_mb": r.get("work_beyond_buffers_mb"),
        }
        if name.startswith("count_"):
            curves["count"].append(point)
        elif name.startswith("size_"):
            w, h = (int(v) for v in name.removeprefix("size_").split("x"))
            curves["side"].append({**point, "side": max(w, h), "megapixels": round(w * h / 1e6, 2)})
    curves["count"].sort(key=lambda p: p["images"])
    curves["side"].sort(key=lambda p: p["megapixels"])  # the JSON's keys are sorted by name, not by size
    return curves


def section_scaling(ctx: SuiteContext) -> dict[str, Any]:
    curves = scaling_curves(flatness_run(ctx))
    figures = []
    counts = curves["count"]
    if len(counts) >= 2:
        a, b = counts[0], counts[-1]
        figures.append(
            Figure(
                "scaling",
                f"peak RSS growth, {a['images']} -> {b['images']} images",
                round(b["peak_rss_mb"] / a["peak_rss_mb"] - 1, 3),
                unit="fraction",
                better="lower",
                target=TARGETS["memory_growth"],
                detail=f"{a['peak_rss_mb']} -> {b['peak_rss_mb']} MB",
            )
        )
    sides = curves["side"]
    if len(sides) >= 2:  # the yardstick: a 1024 px image (the first tiled size) against the largest
        a = next((p for p in sides if p["side"] >= 1024), sides[0])
        b = sides[-1]
        figures.append(
            Figure(
                "scaling",
                f"peak RSS growth, {a['side']} -> {b['side']} px",
                round(b["peak_rss_mb"] / a["peak_rss_mb"] - 1, 3),
                unit="fraction",
                better="lower",
                target=TARGETS["memory_growth"],
                detail=f"{a['peak_rss_mb']} -> {b['peak_rss_mb']} MB (median of repeated runs)",
            )
        )
    notes = [
        "Whole `wm predict` runs (bench/infer.py flatness, torch backend) in fresh processes; each size "
        "runs 3 times and the median peak is kept (a process's peak RSS varies by about 10% run to run). "
        "Images over predict.stream_megapixels are decoded and written strip by strip and batches are "
        "capped at predict.max_batch_megapixels, so the peak should not grow with the image."
    ]
    return {"rows": counts + sides, "figures": figures, "notes": notes, "curves": curves}


# ------------------------------------------------------------------- overhead, contention (bench/suite_costs.py)


def section_overhead(ctx: SuiteContext) -> dict[str, Any]:
    return overhead(ctx)


# --------------------------------------------------------------------------- screening (real photos, peers)


# The naive baseline of issue 15 is the plain script with the model shipped before the text_unet (a UNet):
# its weights as committed then, read from git history (absent from a shallow clone or a tarball).
PREVIOUS_SHIPPED = ("32fa2f3", "models/wmdetect.pt")


def previous_shipped_model(dest: Path) -> Path | None:
    """PREVIOUS_SHIPPED's weights written to `dest`, or None when this checkout's history lacks them."""
    commit, path = PREVIOUS_SHIPPED
    try:
        blob = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(blob)
    return dest


def section_screening(ctx: SuiteContext) -> dict[str, Any]:
    """bench/screen.py: naive script (current and previous shipped model), `wm predict` (default and
    variants) and the OCR detector on the same real photos (1024x768 JPEGs of the corpus's never-trained
    test split) and one 4000x3000 JPEG."""
    out = ctx.work / "screening"
    baseline = previous_shipped_model(ctx.work / "screening-scratch" / "previous-shipped.pt")
    args = [*ctx.sizes["screen_args"], "--model", str(ctx.params.paths.pretrained), "--out", str(out),
            "--work", str(ctx.work / "screening-scratch"),
            *(["--baseline-model", str(baseline)] if baseline else [])]  # fmt: skip
    r = run_bench_script("screen.py", args, out / "screen.json")
    photos, figures = r["photos"], []
    default = photos.get("default", {})
    naive = "naive_baseline" if "x_naive_baseline" in default else "naive"
    for ref, target in ((naive, TARGETS["screen_vs_naive"]), ("ocr", TARGETS["screen_vs_ocr"])):
        value = default.get(f"x_{ref}")
        detail = f"{photos.get(ref, {}).get('images_per_s')} -> {default.get('images_per_s')} img/s"
        figures.append(Figure("screening", f"wm predict default / {ref} (photos, whole process)", value,
                              unit=f"x {ref}", better="higher", target=target, detail=detail))  # fmt: skip
    figures.append(Figure("screening", "wm predict default peak RSS (photos)", default.get("peak_rss_mb"), unit="MB",
                          better="lower", target=TARGETS["screen_rss_mb"]))  # fmt: skip
    figures.append(Figure("screening", "wm predict default mask area on clean real photos", default.get("fp_area"),
                          unit="fraction", better="lower", detail=f"ocr {photos.get('ocr', {}).get('fp_area')}"))  # fmt: skip
    rows = [{"workload": w, "runner": k, **{f: v.get(f) for f in ("images_per_s", "x_naive", "x_ocr", "peak_rss_mb",
                                                                      "fp_area", "masked_share", "error")}}
            for w in ("photos", "large") for k, v in r[w].items()]  # fmt: skip
    s = r["setup"]
    notes = [f"bench/screen.py: {s['images']} photos, {s['size']}, model {s['model']}, load before {s['load_before']}.",
             "default: `wm predict` with params.yaml, its MLflow run included (recorded, then sent by a background "
             f"process: {default.get('sender_s')} s after it ended, waited for before the next runner).",
             f"naive baseline: the plain script with the previously shipped UNet (git {PREVIOUS_SHIPPED[0]})" if baseline
             else f"naive baseline: the plain script with the current model (git {PREVIOUS_SHIPPED[0]}, the previously "
                  "shipped UNet, is not in this checkout's history)"]  # fmt: skip
    return {"rows": rows, "figures": figures, "notes": notes}


def section_contention(ctx: SuiteContext) -> dict[str, Any]:
    return contention(ctx)


SECTION_FUNCTIONS = {
    "dataload": section_dataload,
    "train": section_train,
    "infer": section_infer,
    "oom": section_oom,
    "overhead": section_overhead,
    "scaling": section_scaling,
    "contention": section_contention,
    "screening": section_screening,
}
