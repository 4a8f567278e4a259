"""The shipped pretrained model: export of deployable weights with their provenance.

`wm export-weights` turns an evaluated checkpoint (results/evaluate/model.pt: weights plus the
thresholds calibrated on validation) into the file the project ships (`paths.pretrained`,
default models/wmdetect.pt) and a JSON beside it (same name, .json) that says where it came
from: the command, the effective params, the prepared data's fingerprint and counts, training
wall time and hardware, the evaluation metrics, and the weights' sha256.

The weights file is an ordinary wmdetect checkpoint holding only `model`, `model_args` and
`meta`, loaded like any other (weights_only, CRC-checked). Floating-point tensors are stored as
fp16 when `half` (half the size; `load_model` copies them into the fp32 model). fp16 keeps
F1: the recorded metrics are measured on the exported file, not on the fp32 original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmcore.config import validate
from wmcore.data.prepare import run_prepare
from wmcore.errors import WmError
from wmcore.evaluate.samples import load_split, read_sample
from wmcore.hashing import file_sha256
from wmcore.infer.predictor import get_predictor
from wmcore.metrics import confusion_counts, scores_from_counts
from wmcore.model.checkpoint import load_checkpoint, save_checkpoint
from wmcore.runtime.atomic import write_text
from wmcore.runtime.machine import machine_info
from wmcore.runtime.report import read_json

FORMAT = "wmdetect-weights-1"


def provenance_path(weights: str | Path) -> Path:
    """The provenance JSON of a weights file: same folder and stem, `.json`."""
    return Path(weights).with_suffix(".json")


def half_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp16 (contiguous copies); integer buffers (num_batches_tracked) unchanged."""
    return {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu() for k, v in state.items()
    }


def hardware() -> dict[str, Any]:
    """What the export ran on (the training hardware is in the train summary's `device`)."""
    m = machine_info()
    info: dict[str, Any] = {"python": m["python"], "torch": m["torch"], "machine": m["arch"]}
    if m["gpu"]:
        info.update(gpu=m["gpu"], cuda=m["cuda"])
    return info


def export_weights(
    checkpoint: str | Path, out: str | Path, provenance: dict[str, Any], half: bool = True
) -> dict[str, Any]:
    """Write the shipped weights file `out` and its provenance JSON; returns the provenance written.

    Args:
        checkpoint: an evaluated (or training) checkpoint; its `meta` (calibrated thresholds,
            fusion rule) travels with the weights.
        out: the weights file to write (atomically); the JSON goes beside it.
        provenance: what the caller knows (command, params, data fingerprint, metrics, ...);
            the format, size, precision and sha256 of the written file are added.
        half: store floating tensors as fp16.
    """
    ckpt = load_checkpoint(checkpoint)
    state = half_state_dict(ckpt["model"]) if half else ckpt["model"]
    meta = dict(ckpt.get("meta") or {})
    save_checkpoint(out, {"model": state, "model_args": dict(ckpt["model_args"]), "meta": meta, "format": FORMAT})
    record = {
        **provenance,
        "format": FORMAT,
        "weights": Path(out).name,
        "weights_sha256": file_sha256(out),
        "weights_bytes": Path(out).stat().st_size,
        "precision": "fp16" if half else "fp32",
        "model_args": dict(ckpt["model_args"]),
        "meta": meta,
        "exported_on": hardware(),
    }
    write_text(provenance_path(out), json.dumps(record, indent=2, default=str) + "\n")
    return record


def gather_provenance(params: Any, command: str, checkpoint: str | Path) -> dict[str, Any]:
    """The provenance the pipeline's own outputs hold: train summary, metrics, data stats, params."""
    paths = params.paths
    stats = read_json(Path(paths.prepared) / "stats.json")
    summary = read_json(Path(paths.train_dir) / "train_summary.json")
    metrics = read_json(Path(paths.evaluate_dir) / "metrics.json")
    if not metrics:
        raise WmError(f"{paths.evaluate_dir}/metrics.json not found: run `wm evaluate` before exporting")
    return {
        "command": command,
        "source_checkpoint": str(checkpoint),
        "prepared": {"fingerprint": stats.get("fingerprint"), "counts": stats.get("counts")},
        "training": {
            k: summary.get(k)
            for k in ("device", "world_size", "seconds", "steps", "epochs", "images_per_s", "best_val_f1", "switches")
        },
        "metrics": {  # synthetic splits, real clean photos (false positives), and the calibration chosen
            key: metrics[key]
            for key in ("val", "test", "test_heldout", "real_val", "real_test", "fusion", "calibration")
            if key in metrics
        },
        "params": params.flat(),
    }


# --------------------------------------------------------------------------- check set

# A small synthetic set the shipped weights are re-scored on (`wm check-weights`, tests): the
# project's own generator, a few images, seeded, so its pixels are the same wherever the same
# generator code, fonts and background packages are installed.
CHECK_SET = {
    "prepare.n_train": 1, "prepare.n_val": 1, "prepare.n_test": 8, "prepare.n_test_heldout": 0,
    "prepare.min_side": 256, "prepare.max_side": 384, "prepare.workers": 0, "base.seed": 7,
    "prepare.hard_negative_share": 0.0,  # re-mining (data/hard_negatives.jsonl) must not change the check set
}  # fmt: skip


def prepare_check_set(params: Any, folder: str | Path) -> Path:
    """Generate the check set into `folder` (the generator's params from `params`, counts from CHECK_SET)."""
    data = params.model_dump(mode="json")
    for key, value in {**CHECK_SET, "paths.prepared": str(folder)}.items():
        group, name = key.split(".")
        data[group][name] = value
    run_prepare(validate(data, "check set"))
    return Path(folder)


def check_metrics(weights: str | Path, prepared: str | Path, params: Any) -> dict[str, float]:
    """Pixel F1/IoU at the weights' stored threshold and the mean has-watermark score on the test split.

    Runs the torch backend on the CPU with the fusion rule stored in the weights, the same path
    `wm predict` takes, so a changed file, a changed predictor or a broken load moves these numbers.
    """
    predictor = get_predictor(str(weights), params, backend="torch")
    counts, scores = torch.zeros(4, dtype=torch.int64), []
    for sample in load_split(prepared, "test"):
        image, truth = read_sample(sample)
        summary = predictor.predict_masks([image])[0]
        pred = torch.from_numpy(np.asarray(summary.mask, dtype=bool))
        counts += confusion_counts(pred[None], torch.from_numpy(truth)[None])
        scores.append(float(summary.score))
    pixel = scores_from_counts(counts)
    return {
        "f1": round(float(pixel["f1"]), 4),
        "iou": round(float(pixel["iou"]), 4),
        "mean_image_score": round(float(np.mean(scores)), 4),
        "n_images": len(scores),
    }


def check_differences(
    recorded: dict[str, float], measured: dict[str, float], tolerance: float
) -> dict[str, tuple[float, float]]:
    """{metric: (recorded, measured)} for the check-set numbers that differ by more than `tolerance`."""
    keys = ("f1", "iou", "mean_image_score")
    return {k: (recorded[k], measured[k]) for k in keys if abs(recorded[k] - measured[k]) > tolerance}
