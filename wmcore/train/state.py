"""Training state that survives a restart: counters, best score, history, RNG states, checkpoints.

A training checkpoint holds only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)` (see wmcore.model.checkpoint). Keys:

    model, model_args, meta          the weights and how to rebuild the UNet
    optimizer, scheduler, scaler     state_dicts of AdamW, the LR schedule, the GradScaler
    epoch, step, best_f1             last finished epoch (1-based), optimizer steps, best val F1
    rng                              torch (+ CUDA), numpy and python generator states
    config                           params.model_dump(mode="json") of the run
    train_state                      the rest of `TrainState` (history, counters, elapsed time)
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wmcore.config import Params
from wmcore.data.kept_out import lineage, read_dataset_kept_out
from wmcore.errors import WmError, one_line
from wmcore.model.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from wmcore.runtime.atomic import remove_stale_temp_files

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters of one run; `epoch` is the last finished epoch (1-based, 0 = none yet)."""

    epoch: int = 0
    step: int = 0
    best_f1: float = -1.0
    best_epoch: int = 0
    best_threshold: float | None = None
    bad_validations: int = 0  # validations in a row without a better F1 (early stopping)
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient, whole run
    elapsed_s: float = 0.0  # wall-clock seconds of all sessions of this run
    stop_reason: str | None = None  # "epochs", "time budget", "early stop" once the run is over
    history: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"epochs": [], "steps": []})
    # names (per held-out registry) no sample of this run or of its warm start's lineage drew; None = unknown
    kept_out: dict[str, list[str]] | None = None


def capture_rng() -> dict[str, Any]:
    """States of the torch, CUDA, numpy and python generators as tensors and plain lists/ints."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng` (CUDA states only when the same number of GPUs is present)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def checkpoint_payload(
    state: TrainState, model: nn.Module, optimizer, schedule, scaler, params: Params
) -> dict[str, Any]:
    """Everything `resume_from` needs, from the bare (not compiled, not DDP) model."""
    extra = asdict(state)
    meta = {
        "threshold": None,
        "train_val_threshold": state.best_threshold,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "val_f1": state.best_f1,
        "kept_out": state.kept_out,  # wmcore.data.kept_out: what `wm evaluate` checks test_heldout against
    }
    return checkpoint_dict(
        model,
        meta,
        optimizer=optimizer.state_dict(),
        scheduler=schedule.state_dict(),
        scaler=scaler.state_dict(),
        epoch=state.epoch,
        step=state.step,
        best_f1=state.best_f1,
        rng=capture_rng(),
        config=params.model_dump(mode="json"),
        train_state={k: v for k, v in extra.items() if k not in ("epoch", "step", "best_f1")},
    )


def save_training_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically, refusing weights that are not finite (never a broken checkpoint)."""
    bad = [name for name, t in payload["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise WmError(f"{path}: not saved: non-finite weights in {', '.join(bad[:3])}; lower train.optimizer.lr")
    remove_stale_temp_files(path.parent)  # a run killed while writing left its temp file (a few files: cheap)
    save_checkpoint(path, payload)


def resume_from(path: Path, model: nn.Module, optimizer, schedule, scaler, params: Params) -> TrainState:
    """Load a training checkpoint into the given objects; returns its TrainState."""
    ckpt = load_checkpoint(path)
    if "optimizer" not in ckpt or "train_state" not in ckpt:
        raise WmError(f"{path}: holds weights only, not a training state; start without --resume")
    if ckpt["model_args"] != model.model_args():
        raise WmError(
            f"{path}: model {ckpt['model_args']} differs from params model group {model.model_args()}; "
            "restore the old `model` params or start without --resume"
        )
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise WmError(f"{path}: training state does not fit this model/optimizer: {one_line(exc)}") from None
    schedule.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] or not scaler.is_enabled():  # an fp32 run's scaler state is empty: keep the fresh one
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])
    return TrainState(epoch=ckpt["epoch"], step=ckpt["step"], best_f1=ckpt["best_f1"], **ckpt["train_state"])


def warm_start(path: str | Path, model: nn.Module) -> tuple[list[str], dict[str, Any]]:
    """Initialise `model` from a checkpoint or exported weights file with the same model_args.

    A text_unet checkpoint without the edge head (model.edge) also loads into one with it: the head
    keeps its zero start, so the model computes what the checkpoint did. Returns the names of the
    parameters left at their start (empty when every weight came from the file) and the file's meta.
    """
    ckpt = load_checkpoint(path)
    wanted = model.model_args()
    headless = {k: v for k, v in wanted.items() if k != "edge"}
    if ckpt["model_args"] != wanted and ckpt["model_args"] != headless:
        raise WmError(
            f"train.warm_start: {path} has model {ckpt['model_args']}, params ask for "
            f"{wanted}; set the model group to match or choose another file"
        )
    try:
        result = model.load_state_dict(ckpt["model"], strict=ckpt["model_args"] == wanted)
    except RuntimeError as exc:
        raise WmError(f"train.warm_start: {path}: weights do not fit: {one_line(exc)}") from None
    if result.unexpected_keys or any(not k.startswith("edge.") for k in result.missing_keys):
        raise WmError(
            f"train.warm_start: {path}: weights do not fit: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return list(result.missing_keys), dict(ckpt.get("meta") or {})


def run_kept_out(params: Params, start_meta: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """Held-out names a fresh run never draws: its dataset's, less what its warm start's lineage drew (`start_meta`:
    that checkpoint's meta; None = no warm start). None = unknown."""
    own, why = read_dataset_kept_out(params.paths.prepared)
    if own is None:
        log.warning("%s: checkpoints will not say which held-out names training drew", why)
        return None
    kept = lineage(own, start_meta)
    if kept is None:
        log.warning("train.warm_start: %s records no kept-out names (trained before they were recorded): "
                    "checkpoints will not say which held-out names training drew", params.train.warm_start)
    return kept
