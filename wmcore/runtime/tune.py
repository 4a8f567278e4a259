"""`wm tune`: measure this machine briefly and write the fastest settings that keep accuracy.

Each knob (`tune.knobs`) is a small set of candidate settings. Every candidate runs the real
workload for `tune.seconds_per_candidate` (`wmcore.runtime.tune_workloads`), and `choose` keeps
the current params.yaml setting unless a candidate is `tune.min_gain` faster and changes F1 by
at most `tune.max_f1_delta` (a candidate whose accuracy cannot be measured is never chosen over
one that can). Knobs run in order and each sees the choices before it (threads first).

Measurements are kept in `<paths.cache_dir>/tune_history.json`, keyed by the hardware
fingerprint, the knob, the candidate and what the measurement depends on (model, crop, the
earlier choices), so a rerun re-measures only what changed (`--remeasure` forces all).

The choices that differ from params.yaml go to `tune.output` (default `params-tuned.yaml`, next
to params.yaml), one comment line per choice with the measured numbers. `load_params` merges
that file after params.yaml (before --params-extra and -S) while `tune.apply` is true.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from wmcore.config import TUNE_KNOBS, ConfigError, Params, flatten, load_params, merge, validate
from wmcore.errors import WmError, one_line
from wmcore.runtime.atomic import write_json, write_text

log = logging.getLogger(__name__)

HISTORY_FILE = "tune_history.json"
HISTORY_VERSION = 1


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


# --------------------------------------------------------------------------- history


def hardware_fingerprint() -> dict[str, Any]:
    """What makes measurements of this machine comparable: CPU model, usable cores, memory, GPU, versions."""
    import psutil
    import torch

    from wmcore.runtime.device import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu, "cores": available_cores(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "gpu": gpu, "torch": torch.__version__, "onnxruntime": ort}  # fmt: skip


class TuneHistory:
    """Earlier measurements, one JSON file; a damaged file is set aside with a warning, never fatal."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == HISTORY_VERSION:
                    self.entries = dict(data["entries"])
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                log.warning("%s: unreadable tune history (%s); measuring everything again", self.path, exc)

    @staticmethod
    def key(fingerprint: dict[str, Any], knob: str, trial_label: str, context: dict[str, Any]) -> str:
        blob = json.dumps([fingerprint, knob, trial_label, context], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, key: str) -> Trial | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        fields = {k: v for k, v in entry.items() if k in Trial.__dataclass_fields__}
        return Trial(**{**fields, "reused": True})

    def put(self, key: str, trial: Trial) -> None:
        self.entries[key] = {
            **asdict(trial),
            "reused": False,
            "measured_at": datetime.now().isoformat(timespec="seconds"),
        }

    def save(self) -> None:
        write_json(self.path, {"version": HISTORY_VERSION, "entries": self.entries})


# --------------------------------------------------------------------------- one knob


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


def tune_knob(
    plan: KnobPlan, history: TuneHistory, fingerprint: dict[str, Any], tune_cfg: Any, remeasure: bool = False
) -> Choice:
    """Measure (or reuse from `history`) every candidate of `plan` and choose (`tune_cfg` = params.tune)."""
    if plan.skip_reason:
        return Choice(plan.knob, Trial(plan.current, {}), plan.current, [], f"skipped: {plan.skip_reason}")
    trials = []
    for label, overrides in plan.candidates:
        key = history.key(fingerprint, plan.knob, label, {**plan.context, "overrides": overrides})
        trial = None if remeasure else history.get(key)
        if trial is None:
            trial = measure_safely(plan, label, overrides)
            if trial.error is None:  # failures are retried next time (a missing compiler may get installed)
                history.put(key, trial)
        log.info("tune %s: %s%s", plan.knob, trial.describe(), " (history)" if trial.reused else "")
        trials.append(trial)
    return choose(plan.knob, trials, plan.current, tune_cfg.max_f1_delta, tune_cfg.min_gain)


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


# --------------------------------------------------------------------------- the tuned file


def yaml_value(value: Any) -> str:
    """One value in YAML flow style on one line (lists of stages included)."""
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10**6).strip()[1:-1]


def tuned_file_text(choices: list[Choice], header: list[str]) -> str:
    """The tuned params file: changed choices as YAML keys, each under a comment with the measured numbers."""
    lines = [f"# {h}" for h in header]
    kept = [c for c in choices if not c.changed]
    for c in kept:
        measured = "; ".join(t.describe() for t in c.trials) or "not measured"
        lines.append(f"# {c.knob}: kept params.yaml's {c.current} ({c.reason}); {measured}")
    groups: dict[str, list[str]] = {}
    for c in (c for c in choices if c.changed):
        measured = "; ".join(t.describe() for t in c.trials) or "not measured this run"
        for dotted in c.chosen.overrides:
            groups.setdefault(dotted.split(".")[0], [])
        first_group = next(iter(c.chosen.overrides)).split(".")[0]
        groups[first_group].append(f"  # {c.knob}: {measured} -> {c.chosen.label} ({c.reason})")
        for dotted, value in c.chosen.overrides.items():
            group, _, key = dotted.partition(".")
            if "." in key:
                raise ValueError(f"tuned key {dotted!r}: only group.key is supported in the tuned file")
            groups[group].append(f"  {key}: {yaml_value(value)}")
    for group, body in groups.items():
        lines += [f"{group}:", *body]
    return "\n".join(lines) + "\n"


def carried_over(path: Path, choices: list[Choice]) -> Choice | None:
    """The existing tuned file's keys that no knob of this run can set (a `--knobs` run keeps the others' choices)."""
    if not path.is_file():
        return None
    try:
        earlier = flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError):
        return None
    touched = {key for c in choices for t in [*c.trials, c.chosen] for key in t.overrides}
    kept = {key: value for key, value in earlier.items() if key not in touched}
    if not kept:
        return None
    return Choice("earlier run", Trial("earlier values", kept), "", [], "knobs not tuned this time")


def write_tuned_file(path: Path, choices: list[Choice], header: list[str], params_path: Path) -> None:
    """Validate the tuned settings on top of `params_path`, then write them atomically.

    A value that does not validate raises WmError naming the key, and an earlier tuned file is left as it was.
    """
    earlier = carried_over(path, choices)
    text = tuned_file_text([*choices, earlier] if earlier else choices, header)
    try:
        base = load_params(params_path, tuned=False).model_dump(mode="python")
        validate(merge(base, yaml.safe_load(text) or {}), str(path))
    except ConfigError as exc:
        raise WmError(f"{path}: the tuned settings do not validate ({one_line(exc)}); file left as it was") from None
    write_text(path, text)


# --------------------------------------------------------------------------- the whole run


@dataclass
class TuneReport:
    choices: list[Choice]
    output: Path | None
    seconds: float
    busy_cores: float
    fingerprint: dict[str, Any] = field(default_factory=dict)


def run_tune(
    params: Params,
    params_path: str | Path = "params.yaml",
    knobs: list[str] | None = None,
    remeasure: bool = False,
    write: bool = True,
) -> TuneReport:
    """Tune `knobs` (default tune.knobs) on this machine; write tune.output unless `write` is false.

    Args:
        params: params.yaml (+ --params-extra, -S) loaded WITHOUT the tuned file (load_params(tuned=False)).
        params_path: the params file; the tuned file goes next to it.
    """
    from wmcore.runtime.device import cores_busy_elsewhere
    from wmcore.runtime.tune_plans import TuneSession, plan_for

    started = time.perf_counter()
    unknown = sorted(set(knobs or []) - set(TUNE_KNOBS))
    if unknown:
        raise WmError(f"wm tune: unknown knob(s) {', '.join(unknown)}; choose from {', '.join(TUNE_KNOBS)}")
    busy = cores_busy_elsewhere(0.5)
    if busy >= 0.5:
        log.warning("other processes keep %.1f cores busy: measurements now favour fewer threads; "
                    "tune on a quiet machine", busy)  # fmt: skip
    session = TuneSession.open(params)
    # Measurements made while other processes are busy are kept apart from quiet-machine ones.
    session.fingerprint["busy_cores"] = round(busy)
    history = TuneHistory(Path(params.paths.cache_dir) / HISTORY_FILE)
    choices = []
    for knob in [k for k in TUNE_KNOBS if k in (knobs or params.tune.knobs)]:  # fixed order: threads first
        choice = tune_knob(plan_for(knob, session), history, session.fingerprint, params.tune, remeasure)
        session.accept(choice)
        history.save()
        choices.append(choice)
    output = Path(params_path).parent / params.tune.output
    fp = session.fingerprint
    header = [f"Written by `wm tune` on {datetime.now():%Y-%m-%d %H:%M} for {fp['cpu']}, {fp['cores']} cores, "
              f"torch {fp['torch']}; model {session.model_id}.",
              f"Merged after params.yaml while tune.apply is true; other processes kept {busy} cores busy at start.",
              "Only settings that differ from params.yaml are keys, each below the images/s it measured."]  # fmt: skip
    if write:
        write_tuned_file(output, choices, header, Path(params_path))
    return TuneReport(choices, output if write else None, time.perf_counter() - started, busy, session.fingerprint)


def report_table(report: TuneReport) -> str:
    """Console summary: one row per knob with the measured candidates and the choice."""
    rows = [("knob", "chosen", "why", "measured")]
    for c in report.choices:
        rows.append((c.knob, c.chosen.label, c.reason, "; ".join(t.describe() for t in c.trials)))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(r[i].ljust(width[i]) for i in range(3)) + " | " + r[3] for r in rows]
    where = f"wrote {report.output}" if report.output else "dry run: nothing written"
    return "\n".join([*lines, f"{where} ({report.seconds:.0f} s)"])
