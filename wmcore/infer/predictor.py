"""The predictor: a loaded model + backend that turns images of any size into probability maps.

`get_predictor(model_ref, params, backend)` resolves the model (a checkpoint
path, an MLflow `models:/` or `runs:/` URI, or the training/evaluation output),
builds the backend (torch, onnx, onnx-int8) and caches the result per process,
so the CLI, Prefect tasks and Dask workers load a model once.

`Predictor.predict(images)` takes uint8 (H, W, 3) arrays of any sizes and
returns float32 (H, W) probabilities; `predict_streamed` takes one image read
band by band from its file and writes its maps as rows finish (very large
images: memory flat in the image size). Images larger than `predict.global_side`
also get a downscaled global view fused with the native pass (see
wmcore.infer.working_scale; rule `predict.fusion`, "auto" = the calibrated one in
the model meta). Images whose short side is under `predict.enlarge_below` run enlarged (see
wmcore.infer.enlarge). In the native path, images that fit one tile are batched
together (grouped by shape); larger images are tiled (see wmcore.infer.tiling)
and their tiles batched. `predict.tta_flip` averages every pass with its mirror
image. Batch sizes come from one AdaptiveBatchSizer per predictor, so the size
learnt on one call carries to the next.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.hashing import file_sha256
from wmcore.infer.batching import AdaptiveBatchSizer, BatchSizeCache
from wmcore.infer.enlarge import enlarged_inputs, shrink_passes, with_enlarged
from wmcore.infer.flip_tta import flip_averaged
from wmcore.infer.images import DraftedImage
from wmcore.infer.onnx_backend import build_onnx_backend
from wmcore.infer.sinks import MaskSummary, MaskSummarySink, MaskWriter, ProbabilityMapSink
from wmcore.infer.tiling import RowSource, StripSink, as_row_source, predict_tiled
from wmcore.infer.torch_backend import TorchBackend
from wmcore.infer.working_scale import (
    FUSION_RULES,
    RefineSettings,
    native_and_global_maps,
    resolve_rule,
    run_working_scale,
)
from wmcore.model.checkpoint import load_model
from wmcore.runtime.device import configure_threads, resolve_device
from wmcore.runtime.memory import MemoryMonitor, set_malloc_mmap_threshold

log = logging.getLogger(__name__)

URI_SCHEMES = ("models:/", "runs:/")


class Backend(Protocol):
    """An inference engine: uint8 tiles (N, h, w, 3) -> float32 probabilities (N, h, w)."""

    name: str
    multiple: int  # the model pads inputs to multiples of this (2**depth)

    def run(self, tiles: np.ndarray) -> np.ndarray: ...

    def estimate_mb(self, n: int, height: int, width: int) -> float: ...


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint file on disk and a string that changes whenever its content may have."""

    path: Path
    identity: str


class Predictor:
    """Loaded model + backend + batch sizer.

    Attributes:
        threshold: pixel threshold (calibrated in the checkpoint meta, else params.predict.threshold).
        image_threshold: has-watermark score threshold (calibrated, else 0.5).
        identity: model identity (path + mtime/size + sha, or URI) used for caches.
        fusion: rule fusing native tiles and the global view (wmcore.infer.working_scale.FUSION_RULES).
        meta: the checkpoint's meta as loaded (calibration, provenance, kept-out record); {} when built without one.
    """

    def __init__(
        self,
        backend: Backend,
        params: Params,
        threshold: float,
        image_threshold: float,
        identity: str,
        device: torch.device,
        fusion: str = "tiles",
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.backend, self.params, self.device = backend, params, device
        self.threshold, self.image_threshold, self.identity = threshold, image_threshold, identity
        self.fusion, self.meta = fusion, dict(meta or {})
        pp = params.predict
        self._run_tiles = flip_averaged(backend.run) if pp.tta_flip else backend.run
        self._monitor = MemoryMonitor(device, pp.memory_threshold)
        cache = BatchSizeCache(Path(params.paths.cache_dir) / "batch_sizes.json")
        key = f"{device}|{identity}|{backend.name}|tile{pp.tile_size}"
        self.sizer = AdaptiveBatchSizer(
            pp.batch_size, pp.min_batch_size, pp.max_batch_size, pp.auto_batch, self._memory_ok, cache, key
        )
        self._lock = threading.Lock()  # one batch at a time per predictor (threads share the cached one)
        self.refine = RefineSettings(pp.refine_threshold, pp.refine_max_tiles, pp.tile_size, pp.tile_overlap,
                                     backend.multiple, pp.refine_min_scale, pp.refine_corners)  # fmt: skip

    def _memory_ok(self, batch: int) -> bool:
        pp = self.params.predict
        if self.device.type == "cpu" and pp.host_memory_budget_mb > 0:
            tile = pp.tile_size
            return self.backend.estimate_mb(batch, tile, tile) <= pp.memory_threshold * pp.host_memory_budget_mb
        return self._monitor.usage_fraction() < pp.memory_threshold

    def predict(self, images: Sequence[np.ndarray], fusion: str | None = None) -> list[np.ndarray]:
        """uint8 (H, W, 3) images of any sizes -> float32 (H, W) probabilities in [0, 1], same order.

        fusion: a rule of FUSION_RULES for this call (evaluation scores a calibrated one); None = self.fusion.
        """
        if fusion is not None and fusion not in FUSION_RULES:
            raise WmError(f"fusion rule {fusion!r} unknown; use one of {', '.join(FUSION_RULES)}")
        sinks = [ProbabilityMapSink(*_check_image(im, i)[:2]) for i, im in enumerate(images)]
        self._run(images, sinks, fusion)
        return [s.probs for s in sinks]

    def predict_paths(
        self, images: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """The passes apart: [(native, upsampled working map or None, refined map or None)], float32 (H, W).

        The working and refined maps are None where the image fits predict.global_side (one pass:
        every rule agrees).
        """
        for i, im in enumerate(images):
            _check_image(im, i)
        pp = self.params.predict
        run, shapes = enlarged_inputs(images, pp.enlarge_below, pp.global_side)
        with self._lock:
            maps = native_and_global_maps(run, self._run_native, pp.global_side, self.refine)
            self.sizer.save()
        return [m if shape is None else shrink_passes(m, im.shape[:2])
                for m, im, shape in zip(maps, images, shapes, strict=True)]  # fmt: skip

    def with_thresholds(self, threshold: float | None = None, image_threshold: float | None = None) -> Predictor:
        """This predictor (same model, backend and batch sizer) with the given thresholds instead of the
        calibrated ones; None keeps one. The cached predictor itself is left unchanged."""
        other = copy.copy(self)
        other.threshold = self.threshold if threshold is None else threshold
        other.image_threshold = self.image_threshold if image_threshold is None else image_threshold
        return other

    @property
    def mask_gate(self) -> float:
        """Image score below which masks are emptied (predict.gate_masks), 0 = never."""
        return self.image_threshold if self.params.predict.gate_masks else 0.0

    def predict_masks(self, images: Sequence[np.ndarray], threshold: float | None = None) -> list[MaskSummary]:
        """Like predict, but keeps only uint8 maps, binary masks (>= threshold) and their statistics.

        With predict.gate_masks an image scored below the image threshold gets an empty mask.
        """
        thr = self.threshold if threshold is None else threshold
        pp = self.params.predict
        sinks = [
            MaskSummarySink(*_check_image(im, i)[:2], thr, pp.min_region_pixels, pp.max_regions, gate=self.mask_gate)
            for i, im in enumerate(images)
        ]
        self._run(images, sinks)
        return [s.finish() for s in sinks]

    def predict_streamed(self, image: RowSource, writer: MaskWriter, threshold: float | None = None) -> MaskSummary:
        """Like predict_masks for one image read band by band, its maps written row by row by `writer`.

        Memory does not grow with the image: one band of tile rows, one strip of probabilities and one
        tile batch (wmcore.infer.large_images reads the file and writes the PNGs).
        """
        thr = self.threshold if threshold is None else threshold
        pp = self.params.predict
        height, width = image.shape[:2]
        sink = MaskSummarySink(height, width, thr, pp.min_region_pixels, pp.max_regions, writer, gate=self.mask_gate)
        self._run([image], [sink])
        return sink.finish()

    def _run(self, images: Sequence[np.ndarray], sinks: Sequence[StripSink], fusion: str | None = None) -> None:
        pp = self.params.predict
        images, sinks, finish = with_enlarged(images, sinks, pp.enlarge_below, pp.global_side)
        with self._lock:
            run_working_scale(images, sinks, self._run_native, fusion or self.fusion, pp.global_side, pp.tile_size,
                              self.refine)  # fmt: skip
            self.sizer.save()
        finish()

    def _run_native(self, images: Sequence[np.ndarray], sinks: Sequence[StripSink]) -> None:
        """Native resolution: images that fit one tile batched whole, larger ones tiled (caller holds the lock)."""
        tile, overlap = self.params.predict.tile_size, self.params.predict.tile_overlap
        small: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            if h <= tile and w <= tile:
                small.setdefault((h, w), []).append(i)
            else:
                predict_tiled(image, tile, overlap, self._run_tiles, self.sizer.run, sinks[i],
                              self.backend.multiple, self.batch_limit)  # fmt: skip
        for (h, w), indices in small.items():
            self._run_whole(images, indices, sinks, self.batch_limit(h, w))

    def _run_whole(
        self, images: Sequence[np.ndarray], indices: list[int], sinks: Sequence[StripSink], limit: int | None
    ) -> None:
        """Images that fit one tile: batched whole (same shape), no blending."""

        def run_chunk(chunk: Sequence[int]) -> list[None]:
            # A streamed source that fits one tile is read in one band.
            probs = self._run_tiles(np.stack([as_row_source(images[i]).rows(0, images[i].shape[0]) for i in chunk]))
            for i, p in zip(chunk, probs, strict=True):
                sinks[i].consume(0, p)
            return [None] * len(chunk)

        self.sizer.run(indices, run_chunk, limit)

    def batch_limit(self, height: int, width: int) -> int | None:
        """Most inputs of height x width px per batch under predict.max_batch_megapixels (None = no cap).

        Activation memory grows with the pixels of a batch, not its count: capping the pixels keeps the
        peak of an image cut into full 512 px tiles at that of one whose tiles were shrunk to fit it.
        """
        budget = self.params.predict.max_batch_megapixels
        return max(1, int(budget * 1e6 // (height * width))) if budget > 0 else None

    def stats(self) -> dict[str, Any]:
        """Batch sizer report: final size, success rate, attempts, back-offs."""
        return self.sizer.summary()


def _check_image(image: Any, index: int) -> tuple[int, int]:
    """(H, W) of a uint8 (H, W, 3) array, or of an image read on demand (a DraftedImage); WmError otherwise."""
    if isinstance(image, DraftedImage):
        _check_image(image.reduced, index)
        return image.shape[0], image.shape[1]
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise WmError(f"image #{index}: expected a uint8 (H, W, 3) RGB array, got {got}; load with wmcore.infer.images")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise WmError(f"image #{index}: empty image of shape {image.shape}")
    return image.shape[0], image.shape[1]


# --------------------------------------------------------------------------- model resolution


def resolve_model(model_ref: str | Path | None, params: Params) -> ResolvedModel:
    """Find the checkpoint: explicit path or URI, else params.predict.model, else a default.

    The default is the pipeline's evaluated model (<evaluate_dir>/model.pt: `wm evaluate` puts
    the shipped model there when the fresh one does not beat it on test), else the shipped
    pretrained weights (paths.pretrained), else the last training's <train_dir>/best.pt.
    """
    ref = model_ref if model_ref is not None else params.predict.model
    if ref is None:
        paths = params.paths
        shipped = [Path(paths.pretrained)] if paths.pretrained else []
        candidates = [Path(paths.evaluate_dir) / "model.pt", *shipped, Path(paths.train_dir) / "best.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise WmError(
                f"no model found: looked for {', '.join(map(str, candidates))}; "
                "train one with `wm train` or pass --model PATH|models:/NAME@ALIAS"
            )
        return _local_model(found)
    if str(ref).startswith(URI_SCHEMES):
        return _mlflow_model(str(ref), params)
    path = Path(ref)
    if not path.is_file():
        raise WmError(f"{path}: model checkpoint not found; train one with `wm train` or pass an existing file")
    return _local_model(path)


def _local_model(path: Path) -> ResolvedModel:
    path = path.resolve()
    st = path.stat()
    return ResolvedModel(path, f"{path}@{st.st_mtime_ns}:{st.st_size}")


def _mlflow_model(uri: str, params: Params) -> ResolvedModel:
    """Download a registered/run model with MLflow and return the checkpoint file inside it."""
    import os

    try:
        import mlflow
    except ImportError:
        raise WmError(f"{uri}: MLflow URIs need the mlflow package (pip install mlflow)") from None
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", params.tracking.uri))
    import shutil

    from filelock import FileLock

    dest = Path(params.paths.cache_dir) / "mlflow" / hashlib.sha1(uri.encode()).hexdigest()[:16]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock", timeout=600):
        # An alias may now point at another version: never mix its files with the previous download.
        shutil.rmtree(dest, ignore_errors=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
        except Exception as exc:  # mlflow raises many types (MlflowException, OSError, ...) for a bad URI
            raise WmError(f"{uri}: could not download the model from {params.tracking.uri}: {exc}") from None
    ckpt = local if local.is_file() else _find_checkpoint(local)
    if ckpt is None:
        raise WmError(
            f"{uri}: downloaded to {local} but it holds no .pt checkpoint; log the checkpoint with the model "
            "(mlflow.pytorch.log_model(..., extra_files=[checkpoint]) or mlflow.log_artifact(checkpoint))"
        )
    return ResolvedModel(ckpt.resolve(), f"{uri}#{file_sha256(ckpt)[:16]}")


def _find_checkpoint(folder: Path) -> Path | None:
    preferred = ("model.pt", "best.pt", "checkpoint.pt")
    files = sorted(folder.rglob("*.pt"), key=lambda p: (p.name not in preferred, len(p.parts), str(p)))
    return files[0] if files else None


# --------------------------------------------------------------------------- construction and cache

_CACHE: dict[tuple, Predictor] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(model: ResolvedModel, params: Params, backend: str, device: torch.device) -> tuple:
    pp = params.predict
    relevant = pp.model_dump(exclude={"model", "save_overlay", "overlay_auto_images", "loader_workers", "queue_size",
                                      "stream_megapixels"})  # fmt: skip
    return (model.identity, backend, str(device), params.base.precision, params.base.threads,
            params.paths.cache_dir, params.paths.prepared, tuple(sorted(relevant.items())))  # fmt: skip


def get_predictor(
    model_ref: str | Path | None,
    params: Params,
    backend: str | None = None,
    int8_calibration: Sequence[str | Path] | None = None,
) -> Predictor:
    """The process-wide Predictor for this model, backend, device and settings (built once).

    Args:
        model_ref: checkpoint path, models:/NAME@ALIAS or runs:/ URI; None = params.predict.model,
            else <evaluate_dir>/model.pt, else <train_dir>/best.pt.
        params: validated parameters.
        backend: torch | onnx | onnx-int8; None = params.predict.backend.
        int8_calibration: image files for onnx-int8 calibration when <prepared>/val/images is absent.
    """
    backend = backend or params.predict.backend
    if backend not in ("torch", "onnx", "onnx-int8"):
        raise WmError(f"backend {backend!r} unknown; use torch, onnx or onnx-int8")
    model = resolve_model(model_ref, params)
    device = resolve_device(params.base.device)
    key = _cache_key(model, params, backend, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _build(model, params, backend, device, int8_calibration)
        return _CACHE[key]


def clear_predictor_cache() -> None:
    """Forget cached predictors (tests, or after a checkpoint was replaced in place)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _build(
    model: ResolvedModel, params: Params, backend: str, device: torch.device, int8_calibration: Sequence[str | Path] | None
) -> Predictor:
    threads = configure_threads(params.base.threads, reserved=params.predict.loader_workers)  # decoders' cores
    pp = params.predict
    if set_malloc_mmap_threshold(pp.malloc_mmap_threshold_kb, pp.malloc_trim_threshold_kb):
        log.info("glibc mmap threshold fixed at %d KiB (trim at %d KiB)", pp.malloc_mmap_threshold_kb,
                 pp.malloc_trim_threshold_kb or 2 * pp.malloc_mmap_threshold_kb)  # fmt: skip
    net, ckpt = load_model(model.path, map_location="cpu")
    net = net.fold_for_inference()  # this predictor's own copy: never trained, only run
    meta = ckpt.get("meta") or {}
    threshold = _meta_float(meta, "threshold", params.predict.threshold)
    image_threshold = _meta_float(meta, "image_threshold", 0.5)
    pp = params.predict
    fusion = resolve_rule(pp.fusion, meta.get("fusion"), pp.global_side)
    _warn_uncalibrated(model.path, meta, pp.enlarge_below)
    if backend == "torch":
        engine: Backend = TorchBackend(
            net, device, pp.channels_last, pp.amp, params.base.precision, pp.non_blocking, pp.host_memory_budget_mb
        )
    else:
        engine = build_onnx_backend(net, model.path, params, backend == "onnx-int8", device, threads, int8_calibration)
    log.info("model %s loaded (%s backend on %s, %d threads, fusion %s)", model.path, backend, device, threads, fusion)
    return Predictor(engine, params, threshold, image_threshold, model.identity, device, fusion, meta)


def _warn_uncalibrated(path: Path, meta: dict[str, Any], enlarge_below: int) -> None:
    """Log a warning when predict.enlarge_below differs from the value the model's thresholds were
    calibrated with (meta "enlarge_below"; models exported before the switch existed ran with 0)."""
    if not isinstance(meta.get("threshold"), (int, float)):
        return  # no calibrated thresholds (a training checkpoint): nothing to hold for
    calibrated = meta.get("enlarge_below", 0)
    if isinstance(calibrated, int) and calibrated != enlarge_below:
        log.warning("%s: thresholds calibrated with predict.enlarge_below=%d, running with %d: masks may be "
                    "looser or stricter than calibrated; re-run `wm evaluate` with this value", path, calibrated,
                    enlarge_below)  # fmt: skip


def _meta_float(meta: dict[str, Any], key: str, default: float) -> float:
    value = meta.get(key)
    return float(value) if isinstance(value, (int, float)) and 0.0 < float(value) < 1.0 else default
