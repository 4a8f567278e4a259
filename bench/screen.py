"""Screening real photos: naive script vs `wm predict` (default and variants) vs a generic OCR text detector.

The workload users have: a folder of ordinary photos. Here: `--images` real photos of the corpus's
test split (never trained on) cropped to 4:3 and resized to 1024x768 JPEG (quality 90), plus one
4000x3000 JPEG made from another of them. Every runner is a fresh process on the same files in the
same run, timed whole (start, model load, decoding, inference, writing a mask PNG per image), its
peak RSS from the kernel (wait4's ru_maxrss):
    naive        a plain script: the model loaded once, each image whole at native size, fp32 NCHW,
                 batch 1, sigmoid, threshold, mask + probability PNG
    naive_baseline  the same script with --baseline-model (an earlier shipped model), when given
    default      `wm predict FOLDER --out OUT` with params.yaml: its MLflow run too (tracking.enabled), recorded
                 locally and sent by a background process (tracking.defer_predict), to a sqlite store under
                 --work that one earlier run created (as a user's store exists after their first run)
    <variants>   `wm predict` with -S overrides (e.g. the native-tile path, onnx-int8, no overlays, tracking
                 off, the MLflow run logged inline)
Before each runner, torch and onnxruntime are imported once untimed (the naive scripts on the 4000x3000
photo peak at 5-9 GB and evict them from the page cache). The background sender of a tracked run is
waited for before the next runner starts (its seconds after the process ended are reported as
`sender s`, at nice 19), so no runner is measured beside it.
    ocr          PP-OCRv4 text detection (rapidocr-onnxruntime), detection only, in one process, its
                 boxes filled into a mask PNG (what a user picking it instead would run)

Ratios are to naive and to ocr. Usage (repo root, a quiet machine):
    .venv/bin/python bench/screen.py [--images 32] [--model models/wmdetect.pt] [--out bench/results/screen]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.data.backgrounds import corpus_rows  # noqa: E402
from wmcore.model.checkpoint import load_model  # noqa: E402
from wmcore.runtime.machine import machine_info  # noqa: E402
from wmcore.tracking.deferred import send_pending  # noqa: E402

WM = [sys.executable, "-m", "wmcore.cli"]
VARIANTS = {  # name -> `wm predict` overrides
    "native_tiles": ["-S", "predict.fusion=tiles", "-S", "predict.tile_size=512", "-S", "predict.global_side=512"],
    "onnx": ["-S", "predict.backend=onnx"],
    "onnx_int8": ["-S", "predict.backend=onnx-int8"],
    "glibc_malloc": ["-S", "predict.malloc_mmap_threshold_kb=0", "-S", "predict.malloc_trim_threshold_kb=0"],
    # what a screening run of >= predict.overlay_auto_images images does: masks only, no <name>.overlay.jpg
    "no_overlay": ["-S", "predict.save_overlay=false"],
    # native refinement only for images >= 1.5x the working side (the default before: a 1024x768 photo
    # then runs its working view alone; the default refines every larger image where the view fires)
    "refine_large_only": ["-S", "predict.refine_min_scale=1.5"],
    # no MLflow run at all (what the rows of this bench measured before tracking was deferred)
    "no_tracking": ["-S", "tracking.enabled=false"],
    # the MLflow run logged inside the process (mlflow imported, the store opened, before the first image)
    "tracking_inline": ["-S", "tracking.defer_predict=false"],
}
ONNX = ("onnx", "onnx_int8")  # runners whose ONNX model (cached per model file) one warm-up run builds first
TRACKED = ("default", "tracking_inline")  # runners whose store is created by one warm-up run first


# --------------------------------------------------------------------------- workload


def cover_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` centre-cropped to the aspect of `size` and resized to it (bicubic: also upscales)."""
    w, h = img.size
    aspect = size[0] / size[1]
    cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)


def make_workload(corpus: Path, folder: Path, count: int) -> tuple[list[Path], Path]:
    """`count` 1024x768 JPEGs of the corpus's test photos (every k-th, so all categories) and one 4000x3000."""
    rows = corpus_rows("test", corpus)
    if len(rows) < count + 1:
        raise SystemExit(f"{corpus}: {len(rows)} test photos, need {count + 1}; build it with `wm corpus`")
    step = len(rows) // (count + 1)
    picked = [rows[i * step] for i in range(count + 1)]
    small, large = folder / "photos", folder / "large"
    small.mkdir(parents=True, exist_ok=True)
    large.mkdir(parents=True, exist_ok=True)
    files = []
    for i, row in enumerate(picked[:count]):
        with Image.open(corpus / row["file"]) as im:
            path = small / f"{i:02d}_{Path(row['file']).stem[:40]}.jpg"
            cover_resize(im.convert("RGB"), (1024, 768)).save(path, quality=90)
            files.append(path)
    with Image.open(corpus / picked[-1]["file"]) as im:
        big = large / "large_4000x3000.jpg"
        cover_resize(im.convert("RGB"), (4000, 3000)).save(big, quality=90)
    return files, big


# --------------------------------------------------------------------------- runners (each a fresh process)


def run_measured(cmd: list[str]) -> dict[str, Any]:
    """`cmd` in a child of a child: the middle process reports the grandchild's ru_maxrss exactly."""
    probe = [sys.executable, __file__, "--measure", json.dumps(cmd)]
    proc = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": proc.stderr[-800:] or "no result"}


def measure_child(cmd: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    result: dict[str, Any] = {"seconds": round(wall, 2), "exit": code, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if code not in (0, 3):
        result["error"] = err[-800:]
    return result


def child_naive(model: str, inputs: list[str], out: str) -> None:
    """The plain script a user would write: load once, whole image, fp32 NCHW, batch 1."""
    import torch

    net, ckpt = load_model(model)
    threshold = float((ckpt.get("meta") or {}).get("threshold") or 0.5)
    Path(out).mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for f in inputs:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().contiguous() / 255.0
            probs = torch.sigmoid(net(x))[0, 0].numpy()
            stem = Path(out) / Path(f).stem
            Image.fromarray(((probs >= threshold) * 255).astype(np.uint8)).save(f"{stem}.mask.png")
            Image.fromarray((probs * 255).round().astype(np.uint8)).save(f"{stem}.prob.png")


def child_ocr(inputs: list[str], out: str) -> None:
    """PP-OCRv4 detection only (rapidocr-onnxruntime defaults), boxes filled into a mask PNG per image."""
    import cv2
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()
    Path(out).mkdir(parents=True, exist_ok=True)
    for f in inputs:
        img = cv2.imread(f)
        boxes, _ = engine(img, use_det=True, use_cls=False, use_rec=False)
        mask = np.zeros(img.shape[:2], np.uint8)
        if boxes:
            cv2.fillPoly(mask, [np.asarray(b, np.int32) for b in boxes], 255)
        cv2.imwrite(str(Path(out) / f"{Path(f).stem}.mask.png"), mask)


def runners(model: str, variants: list[str], work: Path, baseline: str | None = None) -> dict[str, Any]:
    """name -> function(files, out_dir) -> command line."""
    me = [sys.executable, __file__]

    def naive_with(weights: str):
        return lambda files, out: [*me, "--child", "naive", "--model", weights, "--out", str(out), *map(str, files)]

    naive = naive_with(model)

    def ocr(files: list[Path], out: Path) -> list[str]:
        return [*me, "--child", "ocr", "--out", str(out), *map(str, files)]

    def predict(extra: list[str]):
        return lambda files, out: [*WM, "-S", f"tracking.uri=sqlite:///{work}/mlflow.db",
                                   "-S", f"paths.cache_dir={work}/cache", *extra, "predict", *map(str, files),
                                   "--out", str(out), "--model", model]  # fmt: skip

    out: dict[str, Any] = {"naive": naive}
    if baseline:  # the plain script with an earlier model (the one a user ran before this version)
        out["naive_baseline"] = naive_with(baseline)
    out["default"] = predict([])
    out.update({name: predict(VARIANTS[name]) for name in variants})
    out["ocr"] = ocr
    return out


# --------------------------------------------------------------------------- report


def warm_file_cache() -> None:
    """Load the libraries every runner maps (untimed), so none starts with them evicted from the page cache
    by the runner before it (the naive scripts on the 4000x3000 photo peak at 5-9 GB)."""
    subprocess.run([sys.executable, "-c", "import torch, onnxruntime, PIL.Image, numpy"], cwd=ROOT, check=False)


def wait_for_sender(spool: Path, timeout_s: float = 120.0) -> float:
    """Seconds until the detached tracking sender (wmcore.tracking.deferred) of the last run has finished."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        busy = any("wmcore.tracking.deferred" in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))  # fmt: skip
        if not busy:
            break
        time.sleep(0.1)
    waited = time.perf_counter() - start
    left = send_pending(spool, wait=True)  # a record no sender took (none expected): sent here, not timed
    if left["sent"] or left["kept"]:
        print(f"tracking records left by the sender: {left}", flush=True)
    return round(waited, 2)


def mask_stats(out: Path) -> dict[str, Any]:
    """What the runner marked on these clean real photos: mean mask area and the share of images with a mask."""
    areas = []
    for path in sorted(out.glob("*.mask.png")):
        with Image.open(path) as im:
            areas.append(float((np.asarray(im) > 127).mean()))
    if not areas:
        return {}
    return {"fp_area": round(float(np.mean(areas)), 5), "masked_share": round(float(np.mean([a > 0 for a in areas])), 3)}



def run_all(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    files, big = make_workload(Path(args.corpus), work / "inputs", args.images)
    results: dict[str, Any] = {"photos": {}, "large": {}}
    (work / "mlflow.db").unlink(missing_ok=True)  # a fresh store per bench run, created by the warm-up run
    for folder in ("mlruns", "cache"):
        shutil.rmtree(work / folder, ignore_errors=True)
    for name, command in runners(args.model, args.variants, work.resolve(), args.baseline_model).items():
        for workload, inputs in (("photos", files), ("large", [big])):
            if name in ONNX or (name in TRACKED and not (work / "mlflow.db").exists()):
                shutil.rmtree(work / "warm", ignore_errors=True)  # built once: the ONNX model, the store
                run_measured(command(inputs[:1], work / "warm"))
                wait_for_sender(work / "cache" / "tracking-spool")
            out = work / f"out-{name}-{workload}"
            shutil.rmtree(out, ignore_errors=True)  # `wm predict` skips images finished by an earlier run
            warm_file_cache()
            r = run_measured(command(inputs, out))
            if name in TRACKED:
                r["sender_s"] = wait_for_sender(work / "cache" / "tracking-spool")
            r.update(mask_stats(out))
            if "seconds" in r:
                r["images_per_s"] = round(len(inputs) / r["seconds"], 3)
                r["seconds_per_image"] = round(r["seconds"] / len(inputs), 3)
            results[workload][name] = r
            print(f"{workload:7s} {name:14s} {r}", flush=True)
    for workload in ("photos", "large"):
        rs = results[workload]
        for r in rs.values():
            for ref in ("naive", "naive_baseline", "ocr"):
                if "images_per_s" in r and "images_per_s" in rs.get(ref, {}):
                    r[f"x_{ref}"] = round(r["images_per_s"] / rs[ref]["images_per_s"], 2)
    m = machine_info()
    results["setup"] = {
        "images": args.images, "size": "1024x768 JPEG q90 (corpus test photos) + one 4000x3000",
        "model": args.model, "baseline_model": args.baseline_model,
        "machine": f"{m['arch']} {m['cores_visible']} cores",
        "load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    return results


def markdown(r: dict[str, Any]) -> str:
    s = r["setup"]
    lines = [f"# Screening real photos ({s['date']})", "",
             f"{s['images']} photos, {s['size']}; model {s['model']}; {s['machine']}; load before {s['load_before']:.2f}.",
             "Each runner is a fresh process (start, model load, decoding, inference, a mask PNG per image).",
             "The photos are clean (no watermark): every masked pixel is a false positive.", ""]  # fmt: skip
    for workload in ("photos", "large"):
        lines += [f"## {workload}", "", "| runner | wall s | img/s | s/img | x naive | x naive_baseline | x ocr | "
                  "peak RSS MB | mask area (clean photos) | images with a mask | sender s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, x in r[workload].items():
            if "error" in x:
                lines.append(f"| {name} | error: {x['error'][:80]!r} |||||| ")
                continue
            lines.append(f"| {name} | {x['seconds']} | {x['images_per_s']} | {x['seconds_per_image']} | "
                         f"{x.get('x_naive', '')} | {x.get('x_naive_baseline', '')} | {x.get('x_ocr', '')} | "
                         f"{x['peak_rss_mb']} | "
                         f"{x.get('fp_area', '')} | {x.get('masked_share', '')} | {x.get('sender_s', '')} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--model", default="models/wmdetect.pt")
    ap.add_argument("--baseline-model", default=None, help="also run the naive script with this (earlier) model")
    ap.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--work", default="/tmp/wmdetect-screen")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "screen"))
    ap.add_argument("--child", choices=["naive", "ocr"])
    ap.add_argument("--measure")
    ap.add_argument("inputs", nargs="*")
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure_child(json.loads(args.measure))))
        return 0
    if args.child == "naive":
        child_naive(args.model, args.inputs, args.out)
        return 0
    if args.child == "ocr":
        child_ocr(args.inputs, args.out)
        return 0
    result = run_all(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen.json").write_text(json.dumps(result, indent=2))
    (out / "screen.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
