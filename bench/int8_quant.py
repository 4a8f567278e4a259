"""Static int8 quantization of the shipped text_unet: which settings keep its masks, at what speed.

`wm predict --backend onnx-int8` quantizes the exported fp32 graph (`wmcore.infer.onnx_backend.quantize_int8`)
on `predict.calibration_images` validation crops. Each variant here quantizes the same fp32 file on the same
calibration crops (the production ones: the first val images) and is compared with fp32 on other val images
(centre crops of up to --side px, ground-truth masks beside): agreement of its mask with the fp32 mask at the
shipped pixel threshold (F1 between the two), pixel F1 against the ground truth for both, the largest and
mean probability difference, and the ORT time per tile batch (2 threads, the production session options).

    .venv/bin/python bench/int8_quant.py --prepared data/prepared-full --out bench/results/int8_quant
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.hashing import file_sha256  # noqa: E402
from wmcore.infer.onnx_backend import (  # noqa: E402
    export_onnx,
    int8_calibration_tiles,
    pad_to_multiple,
    quantize_int8,
    to_nchw_float,
)
from wmcore.metrics import mask_f1  # noqa: E402
from wmcore.model.checkpoint import load_model  # noqa: E402


def variants() -> dict[str, dict]:
    """name -> quantize_int8 overrides of the production settings ({} = production)."""
    from onnxruntime.quantization import CalibrationMethod

    percentile = {"calibrate_method": CalibrationMethod.Percentile, "extra_options": {"CalibPercentile": 99.999}}
    conv_only = {"op_types_to_quantize": ["Conv", "ConvTranspose"]}
    return {
        "minmax (shipped)": {},
        "percentile 99.999": percentile,
        "entropy": {"calibrate_method": CalibrationMethod.Entropy},
        "conv only, minmax": conv_only,
        "conv only, percentile": {**conv_only, **percentile},
    }


def tiles_and_masks(prepared: Path, start: int, count: int, side: int, multiple: int) -> tuple[list, list]:
    images = sorted((prepared / "val" / "images").iterdir())[start : start + count]
    tiles, masks = [], []
    for f in images:
        image = np.asarray(Image.open(f).convert("RGB"))
        mask = np.asarray(Image.open(prepared / "val" / "masks" / f.name)) > 0
        s = max(multiple, min(side, *image.shape[:2]) // multiple * multiple)
        y, x = (image.shape[0] - s) // 2, (image.shape[1] - s) // 2
        tiles.append(to_nchw_float(pad_to_multiple(image[None, y : y + s, x : x + s], multiple)))
        masks.append(mask[y : y + s, x : x + s])
    return tiles, masks


def fixed_side(tile: np.ndarray, side: int) -> np.ndarray:
    """(1, 3, h, w) crop reflect-padded at the bottom / right to (1, 3, side, side)."""
    h, w = tile.shape[-2:]
    return np.pad(tile, ((0, 0), (0, 0), (0, side - h), (0, side - w)), mode="reflect")


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run(path: Path, tiles: list[np.ndarray], threads: int) -> tuple[list[np.ndarray], float]:
    sess = session(path, threads)
    sess.run(None, {"image": tiles[0]})  # warm-up
    out, start = [], time.perf_counter()
    for t in tiles:
        out.append(sess.run(None, {"image": t})[0][0, 0])
    return out, (time.perf_counter() - start) / len(tiles)


def f1(pred: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Pixel F1 pooled over the crops."""
    return mask_f1(np.concatenate([p.ravel() for p in pred]), np.concatenate([t.ravel() for t in truth]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/wmdetect.pt"))
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--calibration", type=int, default=16, help="calibration crops (predict.calibration_images)")
    ap.add_argument("--eval", type=int, default=48, help="val images compared, after the calibration ones")
    ap.add_argument("--side", type=int, default=512, help="crop side (predict.tile_size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model, ckpt = load_model(args.model)
    threshold = float(ckpt.get("meta", {}).get("threshold", 0.5))
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="int8q-"))
    fp32 = work / f"{file_sha256(args.model)[:16]}-fp32.onnx"
    export_onnx(model.fold_for_inference() if hasattr(model, "fold_for_inference") else model, fp32)
    val_files = sorted((args.prepared / "val" / "images").iterdir())
    # one shape for every crop: the histogram calibrators (percentile, entropy) stack their outputs
    calib = [fixed_side(t, args.side) for t in int8_calibration_tiles(val_files, args.calibration, args.side, model.multiple)]
    tiles, truth = tiles_and_masks(args.prepared, args.calibration, args.eval, args.side, model.multiple)
    ref, ref_s = run(fp32, tiles, args.threads)
    ref_masks = [p >= threshold for p in ref]
    rows = [{"variant": "fp32", "s_per_tile": round(ref_s, 4), "agreement_f1": 1.0,
             "f1_vs_truth": round(f1(ref_masks, truth), 4), "max_abs_diff": 0.0, "mean_abs_diff": 0.0}]  # fmt: skip
    print(rows[-1], flush=True)
    for name, options in variants().items():
        if args.only and name not in args.only:
            continue
        path = work / f"{len(rows)}.onnx"
        t0 = time.perf_counter()
        quantize_int8(fp32, path, calib, **options)
        probs, s = run(path, tiles, args.threads)
        masks = [p >= threshold for p in probs]
        diff = [np.abs(p - r) for p, r in zip(probs, ref, strict=True)]
        rows.append({"variant": name, "s_per_tile": round(s, 4), "agreement_f1": round(f1(masks, ref_masks), 4),
                     "f1_vs_truth": round(f1(masks, truth), 4), "max_abs_diff": round(float(max(d.max() for d in diff)), 4),
                     "mean_abs_diff": round(float(np.mean([d.mean() for d in diff])), 5),
                     "quantize_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
        print(rows[-1], flush=True)
    setup = {"model": str(args.model), "threshold": threshold, "calibration_crops": len(calib), "eval_crops": len(tiles),
             "side": args.side, "threads": args.threads, "cores": os.cpu_count(), "load_before": round(load[0], 2)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_quant.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    lines = ["| variant | s / 512 px tile | x fp32 | mask agreement with fp32 (F1) | F1 vs truth | max / mean abs prob diff |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['variant']} | {r['s_per_tile']} | {ref_s / r['s_per_tile']:.2f} | {r['agreement_f1']} | "
                     f"{r['f1_vs_truth']} | {r['max_abs_diff']} / {r['mean_abs_diff']} |")
    (args.out / "int8_quant.md").write_text(json.dumps(setup) + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
