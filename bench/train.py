"""Training benchmark: the naive loop vs the optimized loop, same data, same optimizer steps.

Both variants run `wmcore.train.loop.run_training` (one loop, switches off or on), each in its
own subprocess so peak memory (VmHWM) is that variant's alone:

    naive       train.naive = true: NCHW, eager, fp32, no cache (PNG decode per read), no
                multiscale, each optimizer step's micro x accum images in ONE batch
    optimized   the switches of params.yaml (channels_last, decoded-image RAM cache,
                micro-batches of --micro accumulated --accum times); torch.compile as params.yaml's
                train.compile says unless --compile / --no-compile (off: for the text_unet on this
                CPU it ran at 0.62-0.81x the eager steady state, bench/results/train-finetune-textunet); amp stays
                as params.yaml says (bf16 measured slower on CPU)

Multiscale crops are a choice of training data, not a speed switch: the optimized variant keeps
them off too (--multiscale-share sets both), so the two see the same pixels and F1 compares the
optimizations alone.

Same crop (no progressive stages, so images/s compare like with like), same number of
optimizer steps, same seed and data order. Throughput is the loop's steady state (the first
2 steps, which pay for compilation and cache filling, are left out; the start-up cost is
reported separately as wall time). Peak memory is the process peak RSS on CPU (the CUDA
allocator peak on GPU). Quality is the validation F1 after the last step, compared at each
run's best threshold (evaluation calibrates the threshold anyway; F1 at a fixed 0.5 of a
briefly trained model mostly measures its calibration, and is reported beside it).

Writes bench/results/train.json, train.md and train.png. Usage (repo root):
    .venv/bin/python bench/train.py --steps 40 --crop 256 --micro 2 --accum 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make wmcore importable
    sys.path.insert(0, str(ROOT))

from wmcore.config import load_params  # noqa: E402
from wmcore.data.prepare import run_prepare  # noqa: E402
from wmcore.runtime.atomic import write_json, write_text  # noqa: E402
from wmcore.runtime.machine import machine_info  # noqa: E402
from wmcore.runtime.memory import process_peak_rss_mb, process_rss_mb  # noqa: E402
from wmcore.train.loop import run_training  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TARGETS = {"throughput_ratio_min": 1.5, "peak_memory_ratio_max": 0.7, "f1_abs_delta_max": 0.01}
QUIET_ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


# --------------------------------------------------------------------------- child process


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one variant in this process; returns its summary plus process memory figures."""

    params = load_params(ROOT / "params.yaml", overrides=spec["overrides"])
    idle_mb = process_rss_mb()  # after imports: what any training process pays before any work
    started = time.perf_counter()
    summary = run_training(params)
    return {
        **summary,
        "wall_s": round(time.perf_counter() - started, 2),
        "idle_rss_mb": round(idle_mb, 1),
        "peak_rss_mb": round(process_peak_rss_mb(), 1),
    }


def run_variant(name: str, overrides: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({"overrides": overrides})]
    env = {**os.environ, **QUIET_ENV}
    print(f"[bench] {name}: running ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"[bench] {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"[bench] {name}: {result['images_per_s']:.2f} img/s, peak {result['peak_rss_mb']:.0f} MiB, "
        f"val F1 {result['final_val_f1_best']:.4f} (best threshold), {result['wall_s']:.0f} s",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------- setup


def prepare_data(work: Path, n_train: int, n_val: int) -> Path:
    """A small dataset made by the project's own generator (`wm prepare`) under `work`."""

    target = work / "prepared"
    overrides = {"paths.prepared": str(target), "prepare.n_train": n_train, "prepare.n_val": n_val, "prepare.n_test": 1}
    run_prepare(load_params(ROOT / "params.yaml", overrides=overrides))
    return target


def variant_overrides(args: argparse.Namespace, prepared: Path, work: Path) -> dict[str, dict[str, Any]]:
    common = {
        "paths.prepared": str(prepared),
        "paths.cache_dir": str(work / "cache"),
        "base.threads": args.threads,
        "train.epochs": 1,
        "train.steps_per_epoch": args.steps,
        "train.max_minutes": 0,
        "train.progressive": [],
        "train.crop": args.crop,
        "train.batch_size": args.micro,
        "train.grad_accum_steps": args.accum,
        "train.val_crop": args.crop,
        "train.val_subset": args.val_images,
        "train.val_batch_size": 4,
        "train.log_every": 5,
        "train.patience": 0,
        "train.warm_start": args.warm_start,
        "train.multiscale_share": args.multiscale_share,
    }
    return {
        "naive": {**common, "paths.train_dir": str(work / "naive"), "train.naive": True},
        "optimized": {
            **common,
            "paths.train_dir": str(work / "optimized"),
            "train.naive": False,
            "train.channels_last": True,
            "train.compile": args.compile,
            "loader.cache": "ram",
        },
    }


def machine() -> dict[str, Any]:
    """The machine (wmcore.runtime.machine: CPU, cores, memory, versions, load at the start)."""
    return machine_info()


# --------------------------------------------------------------------------- report


def compare(naive: dict[str, Any], opt: dict[str, Any]) -> dict[str, Any]:
    ratios = {
        "throughput_ratio": round(opt["images_per_s"] / naive["images_per_s"], 3),
        "peak_memory_ratio": round(opt["peak_rss_mb"] / naive["peak_rss_mb"], 3),
        "training_memory_ratio": round(
            (opt["peak_rss_mb"] - opt["idle_rss_mb"]) / max(1e-9, naive["peak_rss_mb"] - naive["idle_rss_mb"]), 3
        ),
        "f1_delta": round(opt["final_val_f1_best"] - naive["final_val_f1_best"], 4),
        "f1_at_half_delta": round(opt["final_val_f1"] - naive["final_val_f1"], 4),
    }
    ratios["meets"] = {
        "throughput": ratios["throughput_ratio"] >= TARGETS["throughput_ratio_min"],
        "peak_memory": ratios["peak_memory_ratio"] <= TARGETS["peak_memory_ratio_max"],
        "f1": abs(ratios["f1_delta"]) <= TARGETS["f1_abs_delta_max"],
    }
    return ratios


def markdown(result: dict[str, Any]) -> str:
    cfg, m, cmp_ = result["config"], result["machine"], result["comparison"]
    lines = [
        "# Training benchmark: naive vs optimized",
        "",
        f"{cfg['steps']} optimizer steps of {cfg['micro'] * cfg['accum']} images at {cfg['crop']} px "
        f"(optimized: {cfg['micro']} x {cfg['accum']} accumulation), params.yaml's model: {cfg.get('model', 'unet')}"
        f"{', warm-started from ' + str(cfg['warm_start']) if cfg.get('warm_start') else ''}, "
        f"{cfg['n_train']} train / {cfg['val_images']} val images from `wm prepare`. "
        f"Machine: {m['cores_free']} free of {m['cores_visible']} cores, torch {m['torch']}, "
        f"load average {m['loadavg_start']} at start, {m['loadavg_end']} at end.",
        "",
        "| variant | images/s (steady) | images/s (all steps) | wall s | peak RSS MiB | idle RSS MiB "
        "| val F1 (best thr.) | val F1 @ 0.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("naive", "optimized"):
        r = result[name]
        lines.append(
            f"| {name} | {r['images_per_s']:.2f} | {r['images_per_s_all']:.2f} | {r['wall_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['idle_rss_mb']:.0f} | {r['final_val_f1_best']:.4f} | {r['final_val_f1']:.4f} |"
        )
    ok = {True: "yes", False: "NO"}
    lines += [
        "",
        "| measure | optimized / naive | target | met |",
        "|---|---|---|---|",
        f"| throughput | {cmp_['throughput_ratio']:.2f}x | >= {TARGETS['throughput_ratio_min']}x | "
        f"{ok[cmp_['meets']['throughput']]} |",
        f"| peak memory (RSS) | {cmp_['peak_memory_ratio']:.2f}x | <= {TARGETS['peak_memory_ratio_max']}x | "
        f"{ok[cmp_['meets']['peak_memory']]} |",
        f"| training memory (peak - idle RSS) | {cmp_['training_memory_ratio']:.2f}x | - | - |",
        f"| val F1 difference (best threshold) | {cmp_['f1_delta']:+.4f} | within {TARGETS['f1_abs_delta_max']} | "
        f"{ok[cmp_['meets']['f1']]} |",
        "",
        f"Optimized switches: `{json.dumps(result['optimized']['switches'])}`.",
        "Steady-state images/s leaves out the first 2 optimizer steps (torch.compile, cache filling); "
        "wall s includes them and the validation.",
    ]
    return "\n".join(lines) + "\n"


def bar_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["naive", "optimized"]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), dpi=100)
    for ax, key, title in zip(
        axes,
        ("images_per_s", "peak_rss_mb", "final_val_f1_best"),
        ("images/s (steady)", "peak RSS, MiB", "val F1 (best threshold)"),
        strict=True,
    ):
        ax.bar(names, [result[n][key] for n in names], color=["#999999", "#2a7ab9"])
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "train.json", result)
    write_text(out_dir / "train.md", markdown(result))
    bar_chart(result, out_dir / "train.png")
    print(markdown(result))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per variant")
    ap.add_argument("--crop", type=int, default=256, help="training crop side, px")
    ap.add_argument("--micro", type=int, default=2, help="optimized micro-batch size")
    ap.add_argument("--accum", type=int, default=4, help="optimized accumulation steps (naive batch = micro x accum)")
    ap.add_argument("--n-train", type=int, default=48, help="generated training images")
    ap.add_argument("--val-images", type=int, default=16, help="generated validation images (all validated)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = the cores really free")
    ap.add_argument("--compile", action="store_true", default=None,
                    help="add torch.compile to the optimized variant (default: params.yaml's train.compile)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave torch.compile out")
    ap.add_argument("--multiscale-share", type=float, default=0.0, help="train.multiscale_share of both variants")
    ap.add_argument("--prepared", type=Path, default=None, help="use this prepared dataset instead of generating one")
    ap.add_argument(
        "--warm-start", default=None, help="both variants start from these weights (F1 then compares fine-tunes)"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        return 0
    base = load_params(ROOT / "params.yaml")
    if args.compile is None:  # the variants follow params.yaml unless told
        args.compile = base.train.compile
    work = Path(tempfile.mkdtemp(prefix="wm-bench-train-"))
    try:
        info = machine()
        prepared = args.prepared or prepare_data(work, args.n_train, args.val_images)
        overrides = variant_overrides(args, prepared, work)
        result: dict[str, Any] = {
            "config": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
            "machine": info,
        }
        result["config"]["prepared"] = str(args.prepared) if args.prepared else "generated by wm prepare"
        m = base.model
        result["config"]["model"] = f"{m.arch} (width {m.width}, base_width {m.base_width})"
        for name in ("naive", "optimized"):
            result[name] = run_variant(name, overrides[name], args.timeout)
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["comparison"] = compare(result["naive"], result["optimized"])
        result["targets"] = TARGETS
        write_results(result, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
