"""The knobs of `wm tune`: for each, its candidate settings and how to measure one (`KnobPlan`).

A `TuneSession` holds what every knob shares: the params being tuned (updated with each
choice, so later knobs measure under earlier ones), the model (trained weights when the
pipeline has made them, else random weights of params.model) and the inference images.

    threads              torch intra-op threads 1..cores (forward passes); all cores is written as 0 (auto)
    precision            training step fp32 vs bf16 autocast; F1 delta of bf16 forward masks vs fp32
    train_channels_last  training step NCHW vs NHWC
    train_micro_batch    the same global batch per optimizer step as 1, 2, 4 or 8 accumulated micro-batches
    train_compile        eager vs torch.compile, judged over a train.max_minutes run (start-up included)
    loader               DataLoader workers 0..cores and prefetch 2/4, measured with the train step running
    predict_backend      torch vs onnx vs onnx-int8 on the inference images; F1 delta vs torch masks
    predict_batch        fixed batches of 1, 2, 4, 8 with the chosen backend
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.hashing import file_sha256
from wmcore.infer.predictor import resolve_model
from wmcore.model.checkpoint import load_model
from wmcore.runtime import device  # via the module: tests stand in other core counts
from wmcore.tune import workloads as work
from wmcore.tune.trials import Choice, KnobPlan, Trial, hardware_fingerprint, with_overrides

DEFAULT_RUN_SECONDS = 300.0  # compile's start-up is judged over this when train.max_minutes is 0


@dataclass
class TuneSession:
    """State shared by the knobs of one `wm tune` run."""

    params: Params
    scratch: Path
    fingerprint: dict[str, Any]
    model: nn.Module
    model_path: Path
    model_id: str
    _images: list[np.ndarray] = field(default_factory=list)
    _reference: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def open(cls, params: Params) -> TuneSession:
        scratch = Path(params.paths.cache_dir) / "tune"
        scratch.mkdir(parents=True, exist_ok=True)
        device.configure_threads(params.base.threads)
        try:
            path = resolve_model(None, params).path
            model, _ = load_model(path)
            model_id = f"trained:{file_sha256(path)[:16]}"
        except WmError:  # no trained model yet: speed does not depend on the weights
            path = work.save_random_checkpoint(params, scratch / "random.pt")
            model, _ = load_model(path)
            model_id = "random:" + "-".join(f"{k}{v}" for k, v in params.model.model_dump().items())
        return cls(params, scratch, hardware_fingerprint(), model.eval(), Path(path), model_id)

    def accept(self, choice: Choice) -> None:
        """Apply a knob's choice to the params later knobs measure with (threads take effect now)."""
        if choice.chosen.overrides:
            self.params = with_overrides(self.params, choice.chosen.overrides)
        device.configure_threads(self.params.base.threads)

    def images(self) -> list[np.ndarray]:
        if not self._images:
            tp = self.params.tune
            self._images = work.tune_images(self.params, tp.images, tp.image_side)
        return self._images

    def int8_calibration_files(self) -> list[Path]:
        """The inference images as PNG files (onnx-int8 calibration when there is no prepared val split)."""
        folder = self.scratch / "calibration"
        folder.mkdir(exist_ok=True)
        files = []
        for i, image in enumerate(self.images()):
            path = folder / f"{i:03d}.png"
            if not path.exists():
                Image.fromarray(image).save(path)
            files.append(path)
        return files

    def reference_probs(self) -> list[np.ndarray]:
        """fp32 torch probability maps of the inference images (what other backends must reproduce)."""
        if not self._reference:
            _, self._reference = work.predictor_rate(self.params, self.model_path, "torch", self.images(), 1, 0.0)
        return self._reference


def train_shape(params: Params) -> tuple[int, int]:
    """(crop, micro-batch) of the longest-running training shape: the last progressive stage, else train.*."""
    t = params.train
    if t.progressive:
        return t.progressive[-1].crop, t.progressive[-1].batch_size
    return t.crop, t.batch_size


# --------------------------------------------------------------------------- knobs


def plan_threads(s: TuneSession) -> KnobPlan:
    cores = device.available_cores()
    counts = sorted({1, cores, *(c for c in (2, 4, 8, 16) if c < cores)})
    label = {k: f"{k} thread{'s' if k > 1 else ''}" + (" (auto)" if k == cores else "") for k in counts}
    current = s.params.base.threads or cores
    side = s.params.tune.image_side

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        k = int(name.split()[0])
        with work.torch_threads(k):
            return Trial(name, overrides, work.forward_rate(s.model, side, s.params.tune.seconds_per_candidate))

    candidates = [(label[k], {"base.threads": 0 if k == cores else k}) for k in counts]
    return KnobPlan("threads", candidates, label.get(current, f"{current} threads"),
                    {"model": s.model_id, "side": side}, measure)  # fmt: skip


def _train_context(s: TuneSession) -> dict[str, Any]:
    t = s.params.train
    return {"model": s.model_id, "shape": train_shape(s.params), "threads": s.params.base.threads,
            "channels_last": t.channels_last, "precision": s.params.base.precision if t.amp else "fp32"}  # fmt: skip


def plan_precision(s: TuneSession) -> KnobPlan:
    crop, micro = train_shape(s.params)
    p, t = s.params, s.params.train
    current = p.base.precision if t.amp and p.base.precision != "fp32" else "fp32"
    candidates = [("fp32", {"train.amp": False}), ("bf16", {"train.amp": True, "base.precision": "bf16"})]

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        r = work.train_step_rate(p, s.model, crop, micro, 1, p.tune.seconds_per_candidate, t.channels_last, name)
        delta = None if name == "fp32" else work.autocast_delta(s.model, crop, torch.bfloat16)
        return Trial(name, overrides, r["images_per_s"], delta)

    context = {k: v for k, v in _train_context(s).items() if k != "precision"}
    return KnobPlan("precision", candidates, current, context, measure)


def plan_channels_last(s: TuneSession) -> KnobPlan:
    crop, micro = train_shape(s.params)
    p = s.params
    precision = p.base.precision if p.train.amp else "fp32"
    candidates = [("NCHW", {"train.channels_last": False}), ("channels_last", {"train.channels_last": True})]

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        nhwc = name == "channels_last"
        r = work.train_step_rate(p, s.model, crop, micro, 1, p.tune.seconds_per_candidate, nhwc, precision)
        return Trial(name, overrides, r["images_per_s"])

    context = {k: v for k, v in _train_context(s).items() if k != "channels_last"}
    current = "channels_last" if p.train.channels_last else "NCHW"
    return KnobPlan("train_channels_last", candidates, current, context, measure)


def micro_batch_candidates(params: Params) -> list[tuple[str, dict[str, Any]]]:
    """Ways to split the same global batch per optimizer step into accumulated micro-batches.

    Each stage's global batch (micro-batch x train.grad_accum_steps) stays what params.yaml
    makes it, so the optimization is the same, except that BatchNorm sees the smaller
    micro-batches: micro-batches of 1 are never offered (batch statistics of one image are
    what the loop would train on, and its accuracy cannot be measured in seconds).
    """
    t = params.train
    stages = [(s.crop, s.batch_size * t.grad_accum_steps) for s in t.progressive] or [
        (t.crop, t.batch_size * t.grad_accum_steps)
    ]
    out = []
    for accum in (1, 2, 4, 8):
        if any(g % accum or g // accum < 2 for _, g in stages) and accum != t.grad_accum_steps:
            continue
        overrides: dict[str, Any] = {"train.grad_accum_steps": accum}
        if t.progressive:
            per_step = [st.batch_size * t.grad_accum_steps for st in t.progressive]
            overrides["train.progressive"] = [
                {**st.model_dump(), "batch_size": g // accum} for st, g in zip(t.progressive, per_step, strict=True)
            ]
        else:
            overrides["train.batch_size"] = t.batch_size * t.grad_accum_steps // accum
        micros = "/".join(str(g // accum) for _, g in stages)
        out.append((f"accum {accum} x micro {micros}", overrides))
    return out


def plan_micro_batch(s: TuneSession) -> KnobPlan:
    p, t = s.params, s.params.train
    candidates = micro_batch_candidates(p)
    current = next((name for name, o in candidates if o["train.grad_accum_steps"] == t.grad_accum_steps), "")
    precision = p.base.precision if t.amp else "fp32"

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        trial_params = with_overrides(p, overrides)
        shapes = [(st.crop, st.batch_size) for st in trial_params.train.progressive] or [train_shape(trial_params)]
        accum = overrides["train.grad_accum_steps"]
        seconds = p.tune.seconds_per_candidate / len(shapes)
        rates = [
            work.train_step_rate(p, s.model, crop, micro, accum, seconds, t.channels_last, precision)["images_per_s"]
            for crop, micro in shapes
        ]
        combined = len(rates) / sum(1.0 / r for r in rates)  # equal images in each stage: harmonic mean
        note = ", ".join(f"{c} px {r:.3g}" for (c, _), r in zip(shapes, rates, strict=True)) if len(rates) > 1 else ""
        return Trial(name, overrides, round(combined, 3), note=note)

    context = {**_train_context(s), "stages": [st.model_dump() for st in t.progressive], "accum": t.grad_accum_steps}
    return KnobPlan("train_micro_batch", candidates, current, context, measure)


def plan_compile(s: TuneSession) -> KnobPlan:
    p, t = s.params, s.params.train
    crop, micro = train_shape(p)
    run_s = t.max_minutes * 60 or DEFAULT_RUN_SECONDS
    precision = p.base.precision if t.amp else "fp32"
    candidates = [("eager", {"train.compile": False}), ("compiled", {"train.compile": True})]

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        r = work.train_step_rate(p, s.model, crop, micro, t.grad_accum_steps, p.tune.seconds_per_candidate,
                                 t.channels_last, precision, compile_model=name == "compiled")  # fmt: skip
        # Judged over a whole run: compilation happens once, at the start, and trains nothing.
        effective = r["images_per_s"] * max(0.0, run_s - r["warmup_s"]) / run_s
        note = f"steady {r['images_per_s']:.3g} img/s, start-up {r['warmup_s']:.0f} s over a {run_s:.0f} s run"
        return Trial(name, overrides, round(effective, 3), note=note)

    context = {**_train_context(s), "accum": t.grad_accum_steps, "run_s": run_s}
    return KnobPlan("train_compile", candidates, "compiled" if t.compile else "eager", context, measure)


def loader_label(workers: int, prefetch: int) -> str:
    if workers == 0:
        return "0 workers"  # prefetching needs workers
    return f"{workers} worker{'s' if workers > 1 else ''}, prefetch {prefetch}"


def plan_loader(s: TuneSession) -> KnobPlan:
    p = s.params
    manifest = Path(p.paths.prepared) / "manifest.jsonl"
    workers = [0, *(w for w in (1, 2, 4) if w <= device.available_cores())]
    candidates = [(loader_label(0, 2), {"loader.workers": 0})] + [
        (loader_label(w, f), {"loader.workers": w, "loader.prefetch_factor": f}) for w in workers[1:] for f in (2, 4)
    ]
    lp = p.loader
    current = loader_label(lp.workers, lp.prefetch_factor)

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        w, f = overrides["loader.workers"], overrides.get("loader.prefetch_factor", lp.prefetch_factor)
        return Trial(name, overrides, work.loader_step_rate(p, s.model, w, f, p.tune.seconds_per_candidate))

    stat = manifest.stat() if manifest.is_file() else None
    context = {**_train_context(s), "cache": lp.cache, "data": [stat.st_size, stat.st_mtime_ns] if stat else None}
    skip = None if stat else f"no prepared dataset at {manifest.parent} (run `wm prepare` first)"
    return KnobPlan("loader", candidates, current, context, measure, skip)


def plan_predict_backend(s: TuneSession) -> KnobPlan:
    p = s.params
    candidates = [(b, {"predict.backend": b}) for b in ("torch", "onnx", "onnx-int8")]

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        rate, probs = work.predictor_rate(p, s.model_path, name, s.images(), p.predict.batch_size,
                                          p.tune.seconds_per_candidate, s.int8_calibration_files())  # fmt: skip
        delta = None if name == "torch" else work.median_split_delta(probs, s.reference_probs())
        return Trial(name, overrides, rate, delta)

    return KnobPlan("predict_backend", candidates, p.predict.backend, _infer_context(s), measure)


def _infer_context(s: TuneSession) -> dict[str, Any]:
    pp = s.params.predict
    return {"model": s.model_id, "threads": s.params.base.threads, "side": s.params.tune.image_side,
            "images": s.params.tune.images, "batch": pp.batch_size, "channels_last": pp.channels_last}  # fmt: skip


def plan_predict_batch(s: TuneSession) -> KnobPlan:
    p = s.params
    pp = p.predict
    sizes = sorted({1, 2, 4, 8, pp.max_batch_size})
    candidates = [(f"batch {b}", {"predict.batch_size": b, "predict.max_batch_size": b,
                                  "predict.min_batch_size": min(pp.min_batch_size, b)}) for b in sizes]  # fmt: skip

    def measure(name: str, overrides: dict[str, Any]) -> Trial:
        rate, _ = work.predictor_rate(p, s.model_path, pp.backend, s.images(), overrides["predict.batch_size"],
                                      p.tune.seconds_per_candidate, s.int8_calibration_files())  # fmt: skip
        return Trial(name, overrides, rate)

    context = {**_infer_context(s), "backend": pp.backend, "batch": None}
    return KnobPlan("predict_batch", candidates, f"batch {pp.max_batch_size}", context, measure)


PLANS = {
    "threads": plan_threads,
    "precision": plan_precision,
    "train_channels_last": plan_channels_last,
    "train_micro_batch": plan_micro_batch,
    "train_compile": plan_compile,
    "loader": plan_loader,
    "predict_backend": plan_predict_backend,
    "predict_batch": plan_predict_batch,
}


def plan_for(knob: str, session: TuneSession) -> KnobPlan:
    return PLANS[knob](session)
