"""`wm tune`: measure this machine briefly and write the fastest settings that keep accuracy.

Each knob (`tune.knobs`) is a small set of candidate settings. Every candidate runs the real
workload for `tune.seconds_per_candidate` (`wmcore.tune.workloads`), and `choose` keeps
the current params.yaml setting unless a candidate is `tune.min_gain` faster and changes F1 by
at most `tune.max_f1_delta` (a candidate whose accuracy cannot be measured is never chosen over
one that can). Knobs run in order and each sees the choices before it (threads first).

Measurements are kept in `<paths.cache_dir>/tune_history.json`, keyed by the hardware
fingerprint, the knob, the candidate and what the measurement depends on (model, crop, the
earlier choices), so a rerun re-measures only what changed (`--remeasure` forces all).

The choices that differ from params.yaml go to `tune.output` (default `params-tuned.yaml`, next
to params.yaml), one comment line per choice with the measured numbers. Applying it is an explicit
opt-in: `-S tune.apply=true` (load_params merges it after params.yaml, before --params-extra and -S)
or `--params-extra params-tuned.yaml`; each command's summary names the files it merged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from wmcore.config import TUNE_KNOBS, ConfigError, Params, flatten, load_params, merge, validate
from wmcore.errors import WmError, one_line
from wmcore.runtime import device
from wmcore.runtime.atomic import write_json, write_text
from wmcore.tune.plans import TuneSession, plan_for
from wmcore.tune.trials import Choice, KnobPlan, Trial, choose, measure_safely

log = logging.getLogger(__name__)

HISTORY_FILE = "tune_history.json"
HISTORY_VERSION = 1


# --------------------------------------------------------------------------- history


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
    started = time.perf_counter()
    unknown = sorted(set(knobs or []) - set(TUNE_KNOBS))
    if unknown:
        raise WmError(f"wm tune: unknown knob(s) {', '.join(unknown)}; choose from {', '.join(TUNE_KNOBS)}")
    busy = device.cores_busy_elsewhere(0.5)  # via the module: tests stand in a quiet machine
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
              f"Applied on request only (-S tune.apply=true, or --params-extra); other processes kept {busy} cores busy at start.",
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
