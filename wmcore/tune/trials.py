"""What `wm tune` measures and chooses: trials, one knob's plan, the choice rule, the hardware fingerprint.

The vocabulary shared by the plans (wmcore.tune.plans) and the run (wmcore.tune.run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wmcore.config import Params, merge, validate
from wmcore.errors import one_line
from wmcore.runtime.machine import machine_info

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- trials and choices


@dataclass
class Trial:
    """One measured candidate.

    Attributes:
        label: what the candidate is, for people ("2 threads", "onnx-int8").
        overrides: dotted params keys the candidate sets ({"predict.backend": "onnx"}).
        images_per_s: measured throughput; None when the measurement failed.
        f1_delta: F1 change vs the fp32 torch reference (0..1); None = same arithmetic, no change.
        note: further measured numbers (start-up seconds, ...).
        error: why the measurement failed (the candidate is then never chosen).
        reused: taken from the history instead of measured now.
    """

    label: str
    overrides: dict[str, Any]
    images_per_s: float | None = None
    f1_delta: float | None = None
    note: str = ""
    error: str | None = None
    reused: bool = False

    def describe(self) -> str:
        """ "onnx 9.4 img/s (F1 delta 0.000)" or "onnx-int8 failed: ..." for comments and tables."""
        if self.error or self.images_per_s is None:
            return f"{self.label} failed: {self.error or 'no result'}"
        text = f"{self.label} {self.images_per_s:.3g} img/s"
        if self.f1_delta is not None:
            text += f" (F1 delta {self.f1_delta:.3f})"
        return text + (f" [{self.note}]" if self.note else "")


@dataclass
class Choice:
    """The outcome of one knob: the chosen trial, every trial measured, and why."""

    knob: str
    chosen: Trial
    current: str
    trials: list[Trial]
    reason: str

    @property
    def changed(self) -> bool:
        return self.chosen.label != self.current


def choose(knob: str, trials: list[Trial], current: str, max_f1_delta: float, min_gain: float) -> Choice:
    """Pick the fastest candidate whose F1 delta is within `max_f1_delta`; keep `current` unless it wins by `min_gain`.

    Args:
        trials: measured candidates; the one labelled `current` is params.yaml's setting.
        max_f1_delta: candidates that move F1 more than this (vs fp32 torch) are never chosen.
        min_gain: fraction a candidate must beat the current setting by (measurement noise guard).
    """
    ok = [t for t in trials if t.error is None and t.images_per_s is not None]
    safe = [t for t in ok if t.f1_delta is None or t.f1_delta <= max_f1_delta]
    rejected = [t.label for t in ok if t not in safe]
    note = f"; rejected for accuracy (F1 delta > {max_f1_delta}): {', '.join(rejected)}" if rejected else ""
    base = next((t for t in safe if t.label == current), None)
    if not safe:
        fallback = base or Trial(current, {})
        return Choice(knob, fallback, current, trials, "no candidate measured successfully; kept params.yaml" + note)
    best = max(safe, key=lambda t: t.images_per_s or 0.0)
    if base is None:
        return Choice(knob, best, current, trials, "current setting could not be measured; fastest safe one" + note)
    if best is base or (best.images_per_s or 0.0) < (base.images_per_s or 0.0) * (1.0 + min_gain):
        return Choice(knob, base, current, trials, f"no candidate {min_gain:.0%} faster than params.yaml's" + note)
    gain = (best.images_per_s or 0.0) / max(base.images_per_s or 0.0, 1e-12)
    return Choice(knob, best, current, trials, f"{gain:.2f}x params.yaml's {current}" + note)

def hardware_fingerprint() -> dict[str, Any]:
    """What makes measurements of this machine comparable: CPU model, usable cores, memory, GPU, versions."""
    m = machine_info()
    return {"cpu": m["cpu"], "cores": m["cores_free"], "memory_gb": m["memory_gb"], "gpu": m["gpu"],
            "torch": m["torch"], "onnxruntime": m["onnxruntime"]}  # fmt: skip


@dataclass
class KnobPlan:
    """How to tune one knob.

    Attributes:
        knob: name (one of tune.knobs).
        candidates: (label, dotted overrides) of each setting tried.
        current: label of the setting params.yaml has now.
        context: what the measurements depend on besides the hardware (part of the history key).
        measure: (label, overrides) -> Trial, the real measurement.
        skip_reason: set when the knob cannot be tuned here (no dataset, ...).
    """

    knob: str
    candidates: list[tuple[str, dict[str, Any]]]
    current: str
    context: dict[str, Any]
    measure: Callable[[str, dict[str, Any]], Trial]
    skip_reason: str | None = None


def measure_safely(plan: KnobPlan, label: str, overrides: dict[str, Any]) -> Trial:
    """The plan's measurement; any failure becomes a failed Trial (that candidate is then never chosen)."""
    try:
        return plan.measure(label, overrides)
    except Exception as exc:  # a backend or compiler missing here must not end the whole tuning
        log.warning("tune %s: candidate %s failed: %s", plan.knob, label, one_line(exc))
        return Trial(label, overrides, error=one_line(exc)[:300])

def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """`params` with dotted `overrides` applied and validated."""
    return validate(merge(params.model_dump(mode="python"), nested(overrides)), "tune candidate")


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """{"predict.backend": "onnx"} -> {"predict": {"backend": "onnx"}}."""
    tree: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = tree
        *groups, leaf = dotted.split(".")
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return tree

