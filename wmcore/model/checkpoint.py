"""Checkpoints: atomic save, safe load (no pickled code), model reconstruction.

A checkpoint is a dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: a tampered file cannot run code, it is refused
with a message naming the file. The archive's CRC-32s are checked first, so bytes
changed on disk (a damaged copy or download) are refused too, not loaded silently;
CRCs are no signature: a deliberate edit that rewrites them is not detected. Keys
(training checkpoints carry all, exported weights only the first three):

    model        state_dict of the model
    model_args   UNet: {"in_channels", "base_width", "depth"}; TextUNet: {"arch": "text_unet", "in_channels", "width"}
    meta         {"threshold": calibrated pixel threshold or None,
                  "image_threshold": calibrated image score threshold or None, ...}
    optimizer, scheduler, scaler, epoch, step, best_f1, rng, config  (training state)
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wmcore.errors import WmError, first_line, one_line
from wmcore.model.factory import model_from_args
from wmcore.runtime.atomic import write_bytes


def checkpoint_dict(model: nn.Module, meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The checkpoint of `model` (module docstring): its weights, the arguments that rebuild it (model_args()),
    `meta` ({} when None) and any `extra` keys (the training state), in that order."""
    return {"model": model.state_dict(), "model_args": model.model_args(), "meta": {} if meta is None else meta, **extra}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise `payload` and write it atomically (temp file + rename)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing pickled code; clear WmError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise WmError(f"{path}: checkpoint not found")
    damaged = damaged_member(path)
    if damaged:
        raise WmError(f"{path}: refused: damaged or altered ({damaged}); restore it from its source or retrain")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = first_line(exc, default="unsafe content")
        raise WmError(f"{path}: refused: checkpoint holds objects that are not plain weights ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WmError(f"{path}: not a readable checkpoint (truncated or corrupt?): {one_line(exc)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise WmError(f"{path}: not a wmdetect checkpoint (needs 'model' and 'model_args')")
    return ckpt


def damaged_member(path: Path) -> str | None:
    """Why the checkpoint archive fails its CRC-32 checks ("CRC mismatch in <member>"), or None if it passes.

    torch.load does not check the CRCs: without this, changed weight bytes load silently. A file
    that is not a zip archive is left to torch.load (which refuses what it cannot read safely).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        return None if not zipfile.is_zipfile(path) else f"broken archive: {exc}"
    except (OSError, EOFError, zlib.error) as exc:  # truncated or undecodable members
        return f"unreadable archive member: {exc}"
    return f"CRC mismatch in {bad}" if bad else None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model (UNet or TextUNet) from a checkpoint; returns (model in eval mode, checkpoint dict)."""
    ckpt = load_checkpoint(path, map_location)
    try:
        model = model_from_args(ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WmError(f"{path}: weights do not match the stored model_args: {one_line(exc)}") from None
    return model.eval(), ckpt
