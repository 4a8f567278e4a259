"""Outputs of `wm bench`: the JSON, a markdown report, PNG charts, and a run in the MLflow experiment `benchmarks`."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from bench.suite_context import EXPERIMENT, PLAN, PLAN_TEXT
from wmcore.runtime.atomic import atomic_open, write_json, write_text
from wmcore.tracking.mlflow_run import connect, git_tags

log = logging.getLogger("wmdetect.bench")


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def verdict_text(f: dict[str, Any]) -> str:
    if f["value"] is None:
        return "not measured"
    if f["target_met"] is None:
        return "info"
    return "met" if f["target_met"] else "MISSED"


def figures_table(figures: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| section | figure | value | plan | plan verdict | our target | verdict | detail |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        plan = f"{PLAN_TEXT[f['plan']]} ({PLAN[f['plan']][0]}-{PLAN[f['plan']][1]}x)" if f["plan"] else "-"
        sign = ">=" if f["better"] == "higher" else "<="
        target = f"{sign} {f['target']}" if f["target"] is not None else "-"
        lines.append(
            f"| {f['section']} | {f['name']} | {_fmt(f['value'])} {f['unit']} | {plan} | "
            f"{f['plan_verdict'] or '-'} | {target} | {verdict_text(f)} | {f['detail']} |"
        )
    return lines


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of dict rows (columns in first-seen order)."""
    if not rows:
        return []
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def markdown(result: dict[str, Any], charts: list[str]) -> str:
    m, s = result["machine"], result["summary"]
    lines = [
        f"# Benchmarks: {m['host']}, {result['date'][:10]} ({result['mode']})",
        "",
        f"{m['cores_free']} free of {m['cores_visible']} cores ({m['cpu']}), torch {m['torch']}, GPU {m['cuda']}; "
        f"other processes kept {m['busy_cores_elsewhere_start']} cores busy at start; load average "
        f"{m['loadavg_start']} at start, {m.get('loadavg_end')} at end; {result['seconds']:.0f} s in all.",
        "",
        f"Targets met: {s['met']}, missed: {s['missed']}, figures without a target: {s['no_target']}.",
        "",
        *figures_table(result["figures"]),
        "",
        *[f"![{Path(c).stem}]({Path(c).name})" for c in charts],
    ]
    for name, section in result["sections"].items():
        lines += ["", f"## {name} ({section.get('seconds', 0):.0f} s)", ""]
        if "error" in section:
            lines.append(f"**failed**: {section['error']}")
            continue
        lines += rows_table(section.get("rows", []))
        lines += [""] + [f"- {n}" for n in section.get("notes", [])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- charts


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def ratio_chart(figures: list[dict[str, Any]], path: Path) -> bool:
    """Bars of every "x naive" figure, green when its target is met, red when missed, grey without one."""
    import matplotlib.pyplot as plt

    bars = [f for f in figures if f["unit"] == "x naive" and f["value"] is not None]
    if not bars:
        return False
    colour = {True: "#2e8b57", False: "#c0392b", None: "#999999"}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.2))
    names = [f"{f['section']}: {f['name']}" for f in bars]
    ax.barh(names, [f["value"] for f in bars], color=[colour[f["target_met"]] for f in bars])
    for i, f in enumerate(bars):
        if f["plan"]:
            ax.fill_betweenx([i - 0.45, i + 0.45], *PLAN[f["plan"]], color="#f1c40f", alpha=0.35, zorder=0)
        if f["target"] is not None:
            ax.plot([f["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.invert_yaxis()
    ax.set_xlabel("x naive (band: plan range, tick: our target; green met, red missed)")
    _save(fig, path)
    return True


def scaling_chart(curves: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Wall time and peak RSS vs image count and vs image side (log-log)."""
    import matplotlib.pyplot as plt

    if not curves or not (curves.get("count") or curves.get("side")):
        return False
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for col, (key, xlabel) in enumerate((("count", "images"), ("side", "image side, px"))):
        points = curves.get(key, [])
        xs = [p["images"] if key == "count" else p["side"] for p in points]
        for row, (metric, ylabel) in enumerate((("wall_s", "wall time, s"), ("peak_rss_mb", "peak RSS, MB"))):
            ax = axes[row][col]
            ax.plot(xs, [p[metric] for p in points], marker="o")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
    _save(fig, path)
    return True


def rows_chart(rows: list[dict[str, Any]], label_keys: tuple[str, ...], path: Path, title: str) -> bool:
    """Bars of images/s, one per row, labelled by `label_keys`."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("images_per_s") is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    ax.barh([" / ".join(f"{k} {r.get(k)}" for k in label_keys) for r in rows], [r["images_per_s"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("images / s")
    ax.set_title(title)
    _save(fig, path)
    return True


def write_charts(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    sections = result["sections"]
    wanted = [
        (f"{stem}-speedups.png", lambda p: ratio_chart(result["figures"], p)),
        (f"{stem}-scaling.png", lambda p: scaling_chart(sections.get("scaling", {}).get("curves", {}), p)),
        (
            f"{stem}-dataload.png",
            lambda p: rows_chart(
                sections.get("dataload", {}).get("rows", []), ("cache", "workers", "pin_memory", "uint8_batches"), p,
                "data loading",
            ),
        ),
        (
            f"{stem}-contention.png",
            lambda p: rows_chart(
                sections.get("contention", {}).get("rows", []), ("threads", "competitor"), p, "thread contention"
            ),
        ),
    ]
    written = []
    for name, draw in wanted:
        try:
            if draw(out_dir / name):
                written.append(out_dir / name)
        except Exception as exc:  # a chart is a nicety: the numbers are in the JSON already
            log.warning("chart %s skipped: %s", name, exc)
    return written


def write_results(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write <stem>.json, <stem>.md and the charts into `out_dir`; returns every file written."""

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{stem}.json", result)
    charts = write_charts(result, out_dir, stem)
    text = markdown(result, [str(c) for c in charts])
    write_text(out_dir / f"{stem}.md", text)
    print(text)
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md", *charts]


# --------------------------------------------------------------------------- MLflow


def metric_name(figure: dict[str, Any]) -> str:
    """An MLflow metric key for a figure: `<section>/<name>` with only the characters MLflow allows."""
    return re.sub(r"[^A-Za-z0-9_\-. /]+", "_", f"{figure['section']}/{figure['name']}")[:250]


def log_to_mlflow(result: dict[str, Any], files: list[Path], params: Any) -> str | None:
    """One run in the experiment `benchmarks` (tracking URI from env or tracking.uri); None when skipped."""
    if not params.tracking.enabled:
        log.info("tracking.enabled is false: benchmark not logged to MLflow")
        return None
    from mlflow.entities import Metric, Param

    bench_params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"experiment": EXPERIMENT})})
    connection = connect(bench_params)
    if isinstance(connection, str):
        log.warning("%s; benchmark results are in %s only", connection, files[0].parent)
        return None
    client, experiment_id = connection
    m = result["machine"]
    run_id = client.create_run(
        experiment_id, run_name=files[0].stem, tags={"host": m["host"], "mode": result["mode"], **git_tags()}
    ).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(f), float(f["value"]), now, 0) for f in result["figures"] if f["value"] is not None]
    metrics += [Metric(f"summary/{k}", float(v), now, 0) for k, v in result["summary"].items()]
    machine = [Param(f"machine.{k}", str(v)[:500]) for k, v in m.items()]
    client.log_batch(run_id, metrics=metrics, params=[*machine, Param("mode", result["mode"])])
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED" if result["complete"] else "FAILED")
    return run_id
