"""Scaling benchmark: throughput with 1 vs 2 worker processes on this machine.

One section per kind of work; each writes bench/results/scale_<section>.json and .md.

    infer   the inbox screening flow (flows.screening.run_screening, what `wm screen` runs) on
            the same images, three ways:
              local    the local runner, chunks in threads of this process, torch threads =
                       the cores really free (the default path, the baseline)
              dask-1   a Dask LocalCluster of 1 worker process
              dask-2   2 worker processes; each sizes its torch threads to its share of the
                       host (distributed.threads_per_worker, 0 = cores / worker processes)
            The cluster is started before the timer (its start-up is reported apart) and the
            flow connects to it by address. Each way first screens a warm-up set (imports,
            one model load per worker process), then the timed set into a fresh folder.
            Reported per way: images/s, wall time, torch threads of every process that ran
            chunks, chunks each worker ran, predictors cached per worker (1 = model loaded
            once), and the load average (other work on the machine skews small machines).
    train   `python -m wmcore.cli ... train` (`wm train`) for the same optimizer steps of the
            same global batch, four ways:
              1-proc              one process, micro-batch = the global batch
              1-proc-accum        one process, 2 micro-batches of half of it accumulated (the
                                  micro-batch the 2 processes get: separates DDP from batch size)
              2-proc              torchrun --standalone, 2 DDP processes (gloo on CPU, nccl on
                                  GPU) of half the micro-batch each, BatchNorm over both ranks
              2-proc-bn-per-rank  the same with train.sync_batchnorm = false
            Each process sizes its torch threads to its share of the cores (base.threads = 0).
            Reported per way: global images/s (steady state), step time, wall time of the
            command (start-up included), threads per process, rank 0's peak memory. On a
            machine with one GPU the 2-process ways are skipped (one GPU per process);
            --train-device cpu measures gloo on that machine's cores instead.

Same code on a GPU machine (base.device auto: the workers share the GPU). On a 2-core CPU
two processes cannot beat one process with two threads by much; the numbers say how much.

Usage (repo root):
    .venv/bin/python bench/scale.py --section infer --images 64 --size 512
    .venv/bin/python bench/scale.py --section train --train-steps 20 --train-batch 8 --train-crop 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make wmcore, flows and bench importable

from bench.infer import make_checkpoint, make_images  # noqa: E402
from bench.train import prepare_data  # noqa: E402
from flows.screening import run_screening, shared_prefect_api  # noqa: E402
from wmcore.infer import predictor  # noqa: E402
from wmcore.runtime.atomic import write_json, write_text  # noqa: E402
from wmcore.runtime.device import available_cores, resolve_device  # noqa: E402
from wmcore.runtime.machine import machine_info  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUIET_ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
WAYS = ("local", "dask-1", "dask-2")


# --------------------------------------------------------------------------- inference section


def worker_probe(dask_worker: Any) -> dict[str, Any]:
    """Runs inside each Dask worker (client.run): its torch threads, cached predictors, tasks run."""
    import torch

    return {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "predictors_cached": len(predictor._CACHE),
        "tasks_executed": dask_worker.state.executed_count,
    }


def screen(inbox: Path, out: Path, chunk: int, args: argparse.Namespace, ckpt: Path, address: str | None) -> dict:
    """One screening of `inbox` into a fresh `out` in chunks of `chunk`; returns wall seconds and the flow's rows."""

    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"paths.cache_dir={args.work / 'cache'}"]  # the model's shape comes from the checkpoint
    start = time.perf_counter()
    result = run_screening(str(inbox), str(out), str(ckpt), str(ROOT / "params.yaml"), address=address,
                           chunk_size=chunk, overrides=overrides)  # fmt: skip
    return {"wall_s": time.perf_counter() - start, "rows": result["rows"]}


def run_way(way: str, args: argparse.Namespace, ckpt: Path, inboxes: dict[str, Path]) -> dict[str, Any]:
    """Warm up, then time one way of running the screening; returns its row of the report."""
    import torch

    load_before = os.getloadavg()[0]
    workers = 0 if way == "local" else int(way.split("-")[1])
    cluster, startup_s, address = None, 0.0, None
    if workers:
        from distributed import Client, LocalCluster

        start = time.perf_counter()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        startup_s, address = time.perf_counter() - start, cluster.scheduler_address
    try:
        # Chunks of 1 image: every worker gets one, so each has imported and loaded the model.
        warm = screen(inboxes["warmup"], args.work / f"{way}-warmup", 1, args, ckpt, address)
        before = client.run(worker_probe) if workers else {}
        timed = screen(inboxes["timed"], args.work / f"{way}-timed", args.chunk, args, ckpt, address)
        after = client.run(worker_probe) if workers else {}
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
    processes = [{**probe, "chunks": probe["tasks_executed"] - before[addr]["tasks_executed"]}
                 for addr, probe in sorted(after.items())]  # fmt: skip
    if not workers:
        processes = [{"pid": os.getpid(), "torch_threads": torch.get_num_threads(), "chunks": None}]
    done = sum(1 for r in timed["rows"] if r.get("status") == "ok")
    return {
        "way": way,
        "worker_processes": workers or 1,
        "images": done,
        "wall_s": round(timed["wall_s"], 2),
        "images_per_s": round(done / timed["wall_s"], 3),
        "busy_s": round(sum(r.get("seconds", 0.0) for r in timed["rows"]), 2),
        "cluster_startup_s": round(startup_s, 2),
        "warmup_wall_s": round(warm["wall_s"], 2),
        "torch_threads": [p["torch_threads"] for p in processes],
        "chunks_per_worker": [p["chunks"] for p in processes],
        "predictors_cached_per_worker": [p.get("predictors_cached") for p in processes],
        "loadavg_1m_before": round(load_before, 2),
    }


def bench_infer(args: argparse.Namespace) -> dict[str, Any]:
    """The inference section: every way `--repeats` times (interleaved), the median wall time kept."""

    inboxes = {"warmup": args.work / "inbox-warmup", "timed": args.work / "inbox"}
    make_images(inboxes["warmup"], 4, (args.size, args.size), seed=10_000)
    make_images(inboxes["timed"], args.images, (args.size, args.size))
    ckpt = make_checkpoint(args.work / "model.pt", args.base_width, args.depth)
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in args.ways}
    with shared_prefect_api():  # one temporary Prefect server for every run (unless one is configured)
        for _ in range(args.repeats):
            for way in args.ways:
                runs[way].append(run_way(way, args, ckpt, inboxes))
                print(f"{way}: {runs[way][-1]['images_per_s']} img/s", flush=True)
    rows = [median_run(r) for r in runs.values()]
    base = next((r for r in rows if r["way"] == "dask-1"), rows[0])
    for r in rows:
        r["speedup_vs_dask_1"] = round(r["images_per_s"] / base["images_per_s"], 2) if base["images_per_s"] else None
    return {"rows": rows, "all_runs": runs, "notes": load_notes(runs)}


def load_notes(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A caveat when the machine was busy: on a small machine other work moves every number."""

    worst = max(r["loadavg_1m_before"] for way in runs.values() for r in way)
    if worst < 0.5 * available_cores():
        return []
    return [f"Caveat: the 1-minute load average reached {worst} on {available_cores()} cores before a run "
            "(other processes were busy), so the spread between runs is large; compare ways run by run."]  # fmt: skip


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (a real run, not a mix of runs), with every run's img/s beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["images_per_s_all_runs"] = [r["images_per_s"] for r in runs]
    chosen["images_per_s_spread"] = round(statistics.pstdev(chosen["images_per_s_all_runs"]), 3)
    return chosen


def markdown_infer(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        "# Scaling: inference (screening flow), 1 vs 2 Dask worker processes",
        "",
        f"{c['images']} images of {c['size']} px, UNet base {c['base_width']} depth {c['depth']} (random weights), "
        f"chunks of {c['chunk']}, {c['repeats']} run(s) per way, interleaved (the median-time run shown; "
        f"of 2: the faster); device {m['device']}, "
        f"{m['cores_free']} cores free of {m['cores_visible']}, torch {m['torch']}, dask {m['dask']}.",
        "Torch threads: local = the cores free; Dask workers = distributed.threads_per_worker, "
        "0 = host cores / worker processes on the host (Dask task slots per worker: 1).",
        "",
        "| way | processes | img/s | x dask-1 | wall s | torch threads / process | chunks / worker "
        "| predictors / worker | cluster start s | load 1m before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['way']} | {r['worker_processes']} | {r['images_per_s']} | {r['speedup_vs_dask_1']} | {r['wall_s']} "
            f"| {r['torch_threads']} | {r['chunks_per_worker']} | {r['predictors_cached_per_worker']} "
            f"| {r['cluster_startup_s']} | {r['loadavg_1m_before']} |"
        )
    lines += ["", "All runs, img/s: " + "; ".join(f"{r['way']} {r['images_per_s_all_runs']}" for r in result["rows"])]
    if result.get("notes"):
        lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- training section

# way -> (processes, micro-batches accumulated, train.sync_batchnorm); the same global batch for every way
TRAIN_WAYS: dict[str, tuple[int, int, bool]] = {
    "1-proc": (1, 1, True),
    "1-proc-accum": (1, 2, True),
    "2-proc": (2, 1, True),
    "2-proc-bn-per-rank": (2, 1, False),
}


def train_command(nproc: int, overrides: dict[str, Any]) -> list[str]:
    """`python -m wmcore.cli ... train` (`wm train`) for one process, the same under torchrun --standalone for several."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    sets = [f"-S{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    return [*launcher, "-m", "wmcore.cli", "--params", str(ROOT / "params.yaml"), *sets, "train"]


def train_way(way: str, args: argparse.Namespace, prepared: Path) -> dict[str, Any]:
    """One timed training run of `way`; returns its row (or why it was skipped)."""
    import torch

    nproc, accum, sync = TRAIN_WAYS[way]
    micro = args.train_batch // (nproc * accum)
    device = resolve_device(args.train_device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        return {"way": way, "processes": nproc, "skipped": f"needs {nproc} GPUs, {torch.cuda.device_count()} here"}
    out = args.work / f"train-{way}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = {
        "base.device": args.train_device, "base.threads": 0, "paths.prepared": str(prepared),
        "paths.train_dir": str(out), "paths.cache_dir": str(args.work / "cache"),
        "model.base_width": args.base_width, "model.depth": args.depth, "train.epochs": 1,
        "train.steps_per_epoch": args.train_steps, "train.batch_size": micro,
        "train.grad_accum_steps": accum, "train.crop": args.train_crop, "train.progressive": [], "train.max_minutes": 0,
        "train.val_subset": 8, "train.compile": False, "train.sync_batchnorm": sync, "tracking.enabled": False,
    }  # fmt: skip
    # torch threads are set by each rank (cores / local ranks); OMP_NUM_THREADS only for other libraries
    env = {**os.environ, **QUIET_ENV, "OMP_NUM_THREADS": str(max(1, available_cores() // nproc))}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(train_command(nproc, overrides), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=args.train_timeout)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"[bench] train {way} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return {
        "way": way,
        "processes": nproc,
        "sync_batchnorm": sync,
        "device": summary["device"],
        "micro_batch": micro,
        "grad_accum": accum,
        "global_batch": args.train_batch,
        "torch_threads_per_process": summary["torch_threads"],
        "steps": summary["steps"],
        "images_per_s": summary["images_per_s"],
        "images_per_s_all_steps": summary["images_per_s_all"],
        "mean_step_s": summary["mean_step_s"],
        "wall_s": round(wall, 2),
        "peak_mem_mb_rank0": summary["mem_peak_mb"],
        "loadavg_1m_before": round(load_before, 2),
    }


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """The training section: every way `--repeats` times (interleaved), the median run kept."""

    if any(args.train_batch % (n * a) for n, a, _ in TRAIN_WAYS.values()):
        raise SystemExit(f"--train-batch {args.train_batch} must split evenly into 2 processes or 2 micro-batches")
    prepared = prepare_data(args.work, args.train_images, 8)
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in args.train_ways}
    for _ in range(args.repeats):
        for way in args.train_ways:
            runs[way].append(train_way(way, args, prepared))
            print(f"train {way}: {runs[way][-1].get('images_per_s', runs[way][-1].get('skipped'))} img/s", flush=True)
    rows = [r[0] if "skipped" in r[0] else median_run(r) for r in runs.values()]
    base = next((r for r in rows if r["way"] == "1-proc" and "skipped" not in r), None)
    for r in rows:
        if base and "skipped" not in r:
            r["speedup_vs_1_proc"] = round(r["images_per_s"] / base["images_per_s"], 2)
    done = {way: [r for r in way_runs if "skipped" not in r] for way, way_runs in runs.items()}
    notes = load_notes(done) if any(done.values()) else []
    return {"rows": rows, "all_runs": runs, "notes": notes}


def markdown_train(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    lines = [
        "# Scaling: training, 1 vs 2 DDP processes (torchrun, gloo on CPU / nccl on GPU)",
        "",
        f"{c['train_steps']} optimizer steps of a global batch of {c['train_batch']} crops of {c['train_crop']} px "
        f"(split between the processes), UNet base {c['base_width']} depth {c['depth']}, {c['train_images']} images "
        f"from `wm prepare`, no compile; {c['repeats']} run(s) per way (median shown); device {m['device']}, "
        f"{m['cores_free']} cores free of {m['cores_visible']}, torch {m['torch']}.",
        "Torch threads per process: the free cores / processes on the machine (base.threads = 0). images/s: all "
        "ranks together, steady state (first 2 steps left out); wall s: the whole command, start-up included.",
        "",
        "| way | processes | BatchNorm | micro x accum x processes | threads / process | img/s | x 1-proc | step s "
        "| wall s | peak MiB (rank 0) | load 1m before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['way']} | {r['processes']} | skipped: {r['skipped']} |  |  |  |  |  |  |  |  |")
            continue
        bn = "all ranks" if r["sync_batchnorm"] or r["processes"] == 1 else "per rank"
        lines.append(
            f"| {r['way']} | {r['processes']} | {bn} | {r['micro_batch']} x {r['grad_accum']} x {r['processes']} "
            f"| {r['torch_threads_per_process']} | {r['images_per_s']} | {r.get('speedup_vs_1_proc')} "
            f"| {r['mean_step_s']} | {r['wall_s']} | {r['peak_mem_mb_rank0']} | {r['loadavg_1m_before']} |"
        )
    done = [r for r in result["rows"] if "skipped" not in r]
    lines += ["", "All runs, img/s: " + "; ".join(f"{r['way']} {r['images_per_s_all_runs']}" for r in done)]
    if result.get("notes"):
        lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sections and report

SECTIONS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "infer": (bench_infer, markdown_infer),
    "train": (bench_train, markdown_train),
}


def machine() -> dict[str, Any]:
    """The machine (wmcore.runtime.machine), the device training runs on, and the Dask version."""
    import distributed  # deferred on purpose: Dask is only needed by this section, and slow to import

    return {**machine_info(), "device": str(resolve_device("auto")), "dask": distributed.__version__}


def write_section(name: str, result: dict[str, Any], out_dir: Path) -> None:
    render = SECTIONS[name][1]
    write_json(out_dir / f"scale_{name}.json", result)
    write_text(out_dir / f"scale_{name}.md", render(result))
    print(render(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=[*SECTIONS, "all"], default="all", help="which section to run")
    ap.add_argument("--images", type=int, default=64, help="timed images per way")
    ap.add_argument("--size", type=int, default=512, help="image side, px")
    ap.add_argument("--chunk", type=int, default=8, help="images per screening task (a Dask task)")
    ap.add_argument("--base-width", type=int, default=16, help="UNet base width")
    ap.add_argument("--depth", type=int, default=4, help="UNet depth")
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="ways of running the inference")
    ap.add_argument("--repeats", type=int, default=1, help="runs per way, interleaved; the median is reported")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--train-ways", nargs="+", choices=list(TRAIN_WAYS), default=list(TRAIN_WAYS), help="train: ways")
    ap.add_argument("--train-steps", type=int, default=20, help="train: optimizer steps per run")
    ap.add_argument("--train-batch", type=int, default=8, help="train: global batch (split between processes)")
    ap.add_argument("--train-crop", type=int, default=128, help="train: crop side, px")
    ap.add_argument("--train-images", type=int, default=32, help="train: images generated by `wm prepare`")
    ap.add_argument("--train-device", choices=["auto", "cpu", "cuda"], default="auto", help="train: base.device")
    ap.add_argument("--train-timeout", type=float, default=1800, help="train: seconds one run may take")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    names = list(SECTIONS) if args.section == "all" else [args.section]
    args.work = Path(tempfile.mkdtemp(prefix="wm-bench-scale-"))
    try:
        for name in names:
            info = machine()
            result = SECTIONS[name][0](args)
            info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            config = {k: v for k, v in vars(args).items() if k not in ("out", "work", "section")}
            write_section(name, {"config": config, "machine": info, **result}, args.out)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
