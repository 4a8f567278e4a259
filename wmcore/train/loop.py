"""`wm train`: the one training loop, every optimization a switch on it.

    run_training(params, resume=False, run_logger=None) -> summary dict

reads like the algorithm:

    setup_run         device, threads, seed, data, model, optimizer, schedule, resume or warm
                      start (the builders live in wmcore.train.setup)
    for each epoch:
        on_epoch_start    pick the progressive stage; a new stage gets a new loader
        train_epoch       train_step per optimizer step (accumulate, clip, step); LR per step;
                          stop inside the epoch when the time budget is spent
        validation_step   every val_every epochs, and after the last one
        on_epoch_end      history, last.pt / best.pt, early stopping
    finish_run            train_summary.json, history.json, loss_curve.png, summary table

Switches (params `train`): channels_last, compile (falls back to eager with a warning when
it fails), amp (autocast with base.precision; fp16 adds a GradScaler), grad_accum_steps,
progressive stages, multiscale crops, the decoded-image cache (`loader.cache`). `train.naive`
turns them all off on this same code, for the benchmark; the naive run puts each optimizer
step's images (batch_size x grad_accum_steps) in one batch, so both paths do the same work.
Out of memory in a step cuts its micro-batches finer and retries it, keeping the images per
optimizer step (wmcore.train.oom_backoff).

DDP (torchrun; see wmcore.train.distributed): rank and world size come from the environment;
the caller opens the process group (`distributed_session`), the run wraps the model in
DistributedDataParallel (BatchNorm over all ranks with train.sync_batchnorm), shards training
and validation data by rank, skips the gradient all-reduce on all but the last micro-batch,
sums validation counts over ranks and takes rank 0's time-budget clock and stop decision;
only rank 0 writes files and logs. `train.batch_size` is per process; images/s is global.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wmcore.config import Params
from wmcore.data.dataset import WatermarkDataset
from wmcore.data.loader import EpochSampler, make_loader
from wmcore.errors import WmError, first_line
from wmcore.model import TextUNet, build_model
from wmcore.model.ocr_import import import_text_detector, text_detector_onnx
from wmcore.runtime.device import resolve_device
from wmcore.runtime.memory import MemoryMonitor
from wmcore.tracking.sink import NullLogger, RunLogger
from wmcore.train import history as outputs
from wmcore.train.distributed import (
    SharedProgress,
    agree,
    convert_batchnorm,
    rank_device,
    rank_info,
    require_process_group,
    threads_per_rank,
    wrap_ddp,
)
from wmcore.train.monitor import StepMonitor
from wmcore.train.oom_backoff import MicroBatchBackoff
from wmcore.train.schedule import LRSchedule, RunProgress, Stage, stage_epoch
from wmcore.train.setup import (
    Switches,
    build_data,
    build_optimization,
    fit_stage,
    freeze_except,
    maybe_compile,
    place_model,
    resolve_switches,
    samples_per_rank,
    scale_batchnorm_momentum,
    seed_everything,
    stage_of,
    steps_in_epoch,
)
from wmcore.train.state import (
    TrainState,
    checkpoint_payload,
    resume_from,
    run_kept_out,
    save_training_checkpoint,
    warm_start,
)
from wmcore.train.steps import StepTools, validation_step

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# StepMonitor.log_point() keys -> tracked metric names (grouped by `/`: MLflow charts section by group)
STEP_POINT_NAMES = {"step_s": "train/step_s", "images_per_s": "train/images_per_s", "peak_mem_mb": "system/peak_mem_mb",
                    "mem_mb": "system/mem_mb", "cpu_percent": "system/cpu_percent", "cleanup": "system/memory_cleanup"}


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything the loop's hooks share."""

    params: Params
    device: torch.device
    switches: Switches
    rank: int
    world_size: int
    train_dir: Path
    eager_model: nn.Module  # the bare model: checkpoints are its state_dict
    eager_train_model: nn.Module  # what training falls back to if compile fails: DDP(eager_model) or eager_model
    eval_model: nn.Module  # what validation runs: never DDP (ranks validate different images)
    tools: StepTools
    schedule: LRSchedule
    progress: RunProgress
    monitor: StepMonitor
    logger: RunLogger
    state: TrainState
    train_set: WatermarkDataset
    val_batches: DataLoader
    loader: DataLoader | None = None
    stage: Stage | None = None
    stage_epoch: int = 1  # the planned epoch whose progressive stage the current epoch uses
    compiled_ok: dict[str, bool] = field(default_factory=lambda: {"train": False, "eval": False})
    nonfinite_in_row: int = 0
    oom: MicroBatchBackoff = field(default_factory=MicroBatchBackoff)  # finer micro-batches after out of memory

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def run_training(params: Params, resume: bool = False, run_logger: RunLogger | None = None) -> dict[str, Any]:
    """Train the UNet as `params` says; returns the run summary (also in train_summary.json).

    Args:
        params: validated configuration (groups base, paths, model, loader, train).
        resume: continue from <paths.train_dir>/last.pt (same weights as an uninterrupted run
            on CPU with a fixed seed and no time budget).
        run_logger: tracking sink (MLflow); None = no tracking.
    """
    run = setup_run(params, resume, run_logger)
    for epoch in range(run.state.epoch + 1, params.train.epochs + 1):
        if run.state.stop_reason:
            break
        if run.state.epoch and run.progress.out_of_time():  # a resumed run whose budget is spent
            run.state.stop_reason = "time budget"
            break
        on_epoch_start(run, epoch)
        trained = train_epoch(run, epoch)
        last = epoch == params.train.epochs or trained["out_of_time"]
        validated = validate(run) if last or epoch % params.train.val_every == 0 else None
        on_epoch_end(run, epoch, trained, validated)
    return finish_run(run)


# --------------------------------------------------------------------------- setup


def setup_run(params: Params, resume: bool, run_logger: RunLogger | None) -> Run:
    """Device, threads, seeds, data, model, optimizer, schedule; then resume or warm start; then DDP, compile."""
    ranks = rank_info()
    require_process_group(ranks)
    try:
        device = rank_device(resolve_device(params.base.device), ranks)
    except RuntimeError as exc:
        raise WmError(str(exc)) from None
    threads_per_rank(params.base.threads, ranks, params.loader.workers)
    if device.type == "cuda":  # crops are fixed per stage: the per-shape search pays off after a few steps
        torch.backends.cudnn.benchmark = params.base.cudnn_benchmark
    seed_everything(params.base.seed)
    rank, world_size = ranks.rank, ranks.world_size
    switches = resolve_switches(params, device)
    train_set, val_batches = build_data(params, switches, device)
    eager = place_model(build_model(**params.model.model_dump()), switches, device)
    if world_size > 1 and params.train.sync_batchnorm:  # before the optimizer takes the parameters
        eager = convert_batchnorm(eager, device)
    if params.train.bn_momentum_per_step:
        scale_batchnorm_momentum(eager, switches.grad_accum)
    if params.train.train_only:  # before the optimizer: it takes only what trains
        trainable, frozen = freeze_except(eager, params.train.train_only)
        log.info("training %d parameters (%s), %d frozen", trainable, ", ".join(params.train.train_only), frozen)
    state = TrainState()
    tools, schedule = build_optimization(params, switches, device, eager)  # after placing: state follows params
    train_dir = Path(params.paths.train_dir)
    if resume:
        state = resume_from(train_dir / LAST, eager, tools.optimizer, schedule, tools.scaler, params)
        log.info("resuming after epoch %d (step %d) from %s", state.epoch, state.step, train_dir / LAST)
    else:
        state.kept_out = run_kept_out(params, start_weights(params, eager))
    # DDP after resume (it broadcasts rank 0's weights) and inside compile (dynamo then splits
    # the graph at gradient buckets, overlapping the all-reduce with the backward pass).
    eager_train = wrap_ddp(eager, device, params.train.sync_batchnorm) if world_size > 1 else eager
    tools.model = maybe_compile(eager_train, switches)
    eval_model = tools.model if world_size == 1 else maybe_compile(eager, switches)
    planned = sum(steps_in_epoch(params, switches, len(train_set), e) for e in range(1, params.train.epochs + 1))
    progress_type = SharedProgress if world_size > 1 else RunProgress
    progress = progress_type(planned, params.train.max_minutes * 60.0, elapsed_before_s=state.elapsed_s)
    monitor = StepMonitor(MemoryMonitor(device, params.train.memory_cleanup_threshold))
    logger = run_logger if run_logger is not None and rank == 0 else NullLogger()
    run = Run(
        params=params, device=device, switches=switches, rank=rank, world_size=world_size, train_dir=train_dir,
        eager_model=eager, eager_train_model=eager_train, eval_model=eval_model, tools=tools, schedule=schedule,
        progress=progress, monitor=monitor, logger=logger, state=state, train_set=train_set, val_batches=val_batches,
    )  # fmt: skip
    announce(run, planned)
    return run


def start_weights(params: Params, eager: nn.Module) -> dict[str, Any] | None:
    """A fresh run's first weights: train.warm_start's, else PP-OCRv4's encoder (text_unet), else the init.

    Returns the warm start's meta (its kept-out record), None without a warm start."""
    if params.train.warm_start:
        fresh, meta = warm_start(params.train.warm_start, eager)
        if fresh:
            log.info("warm start from %s; %d tensors start fresh (%s)", params.train.warm_start, len(fresh),
                     ", ".join(sorted({n.rsplit(".", 1)[0] for n in fresh})))
        return meta
    if isinstance(eager, TextUNet) and params.train.init_encoder == "ppocrv4":
        counts = import_text_detector(eager, text_detector_onnx(params.paths.cache_dir))
        log.info("text_unet encoder initialised from PP-OCRv4 det (%d tensors)", counts["tensors"])
    return None


def announce(run: Run, planned: int) -> None:
    """Log the run's configuration once (console and tracker)."""
    if not run.is_main:
        return
    budget = f", budget {run.params.train.max_minutes:g} min" if run.params.train.max_minutes else ""
    log.info(
        "training on %s x %d process(es): %d train images, %d planned steps%s; switches %s",
        run.device,
        run.world_size,
        len(run.train_set),
        planned,
        budget,
        asdict(run.switches),
    )
    run.logger.log_params(run.params.flat())
    tags = {"step": "train", "naive": str(run.params.train.naive).lower(), "device": str(run.device)}
    run.logger.set_tags({**tags, "world_size": str(run.world_size)})


# --------------------------------------------------------------------------- hooks


def on_epoch_start(run: Run, epoch: int) -> None:
    """Enter the epoch's progressive stage; a new stage (crop or batch) gets a new loader.

    The loader is rebuilt rather than updated because persistent workers hold their own copy of
    the dataset and would never see the new crop.
    """
    run.stage_epoch = stage_epoch(epoch, run.progress.time_fraction(), run.params.train.epochs)
    wanted = stage_of(run.params, run.switches, run.stage_epoch)
    stage = fit_stage(wanted, run.switches.grad_accum, -(-len(run.train_set) // run.world_size))
    if stage != run.stage or run.loader is None:
        if run.is_main and stage != wanted:
            log.warning(
                "batch %d x %d accumulation > %d training images: micro-batch lowered to %d",
                wanted.batch_size,
                run.switches.grad_accum,
                len(run.train_set),
                stage.batch_size,
            )
        if run.stage is not None and run.is_main:
            log.info("epoch %d: progressive stage crop %d, batch %d", epoch, stage.crop, stage.batch_size)
        run.loader = None  # drop the old loader first: its workers shut down with it
        run.train_set.crop = stage.crop
        num = samples_per_rank(run.params, run.switches, stage, len(run.train_set), run.world_size)
        sampler = EpochSampler(len(run.train_set), run.params.base.seed, True, num, run.rank, run.world_size)
        run.loader = make_loader(
            run.train_set,
            run.params.loader,
            stage.batch_size,
            True,
            run.device,
            run.params.base.seed,
            sampler,
            drop_last=True,
        )
        run.stage = stage
    run.loader.sampler.set_epoch(epoch)


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Optimizer steps over one epoch; returns {"train_loss", "seconds", "out_of_time", "lr"}."""
    accum = run.switches.grad_accum
    total = steps_in_epoch(run.params, run.switches, len(run.train_set), run.stage_epoch)
    bar = tqdm(
        total=total,
        desc=f"epoch {epoch}/{run.params.train.epochs} crop {run.stage.crop}",
        unit="step",
        disable=not run.is_main,
        mininterval=1.0,
        dynamic_ncols=True,
        leave=False,
    )
    losses, window, micro, out_of_time = [], [], [], False
    started = run.progress.elapsed_s()
    run.monitor.restart_clock()
    for batch in run.loader:
        micro.append(batch)
        if len(micro) < accum:
            continue
        result = guarded_train_step(run, micro)
        images, micro = sum(int(b[0].shape[0]) for b in micro) * run.world_size, []  # every rank's share
        seconds = run.monitor.step_done(images)
        if not result["skipped"]:
            losses.append(result["loss"])
            window.append(result["loss"])
        bar.update(1)
        bar.set_postfix(
            loss=f"{result['loss']:.4f}",
            img_s=f"{images / max(seconds, 1e-9):.1f}",
            lr=f"{run.schedule.last_lr:.2e}",
            run=f"{run.progress.fraction(run.state.step):.0%}",
            refresh=False,
        )
        if run.state.step % run.params.train.log_every == 0 and window and not result["skipped"]:
            log_step(run, window)
            window = []
        if run.progress.out_of_time():
            out_of_time = True
            break
    bar.close()
    mean_loss = sum(losses) / len(losses) if losses else None
    return {
        "train_loss": mean_loss,
        "seconds": run.progress.elapsed_s() - started,
        "out_of_time": out_of_time,
        "lr": run.schedule.last_lr,
    }


def guarded_train_step(run: Run, micro: list) -> dict[str, Any]:
    """LR for this step, then `train_step`; counts skipped (non-finite) steps and stops on too many.

    Under DDP every rank takes the same decisions: the time fraction is rank 0's (SharedProgress)
    and `train_step` averages the loss over ranks before testing it.
    """
    if isinstance(run.progress, SharedProgress):
        run.progress.sync()
    run.schedule.update(run.progress.fraction(run.state.step))
    result = with_compile_fallback(run, "train", lambda: run.oom.step(run.tools, micro))
    if result["skipped"]:
        run.state.nonfinite_steps += 1
        run.nonfinite_in_row += 1
        log.warning(
            "step %d: non-finite loss %s: update skipped (%d in a row)",
            run.state.step + 1,
            result["loss"],
            run.nonfinite_in_row,
        )
        if run.nonfinite_in_row >= run.params.train.max_nonfinite_steps:
            raise WmError(
                f"training diverged: {run.nonfinite_in_row} non-finite losses in a row "
                f"(train.max_nonfinite_steps = {run.params.train.max_nonfinite_steps}); no checkpoint was written "
                f"for this epoch. Lower train.optimizer.lr or set train.grad_clip, then rerun or resume from last.pt"
            )
    else:
        run.nonfinite_in_row = 0
        run.state.step += 1
    return result


def with_compile_fallback(run: Run, mode: str, call):
    """Run `call`; if the compiled model fails the first time in this mode, warn and go eager for good.

    `mode` "train" runs `run.tools.model` (eager: `eager_train_model`), "eval" runs `run.eval_model`
    (eager: `eager_model`); `call` must read the model when called.
    """
    compiled = run.tools.model if mode == "train" else run.eval_model
    if compiled in (run.eager_train_model, run.eager_model) or run.compiled_ok[mode]:
        return call()
    try:
        out = call()
    except Exception as exc:  # compilation errors have no common base class
        log.warning("torch.compile failed in %s (%s: %s); falling back to eager", mode, type(exc).__name__,
                    first_line(exc))  # fmt: skip
        run.tools.optimizer.zero_grad(set_to_none=True)
        if run.eval_model is compiled:  # one process: train and eval share the compiled model
            run.eval_model = run.eager_model
        if run.tools.model is compiled:
            run.tools.model = run.eager_train_model
        return call()
    run.compiled_ok[mode] = True
    return out


def log_step(run: Run, window: list[float]) -> None:
    """Step metrics (mean loss since the last log point, LR, throughput, memory, CPU) to history and tracker."""
    point = run.monitor.log_point()
    loss = sum(window) / len(window)
    step = run.state.step
    run.state.history["steps"].append(
        {
            "step": step,
            "loss": round(loss, 6),
            "lr": run.schedule.last_lr,
            "images_per_s": round(point["images_per_s"], 3),
        }
    )
    metrics = {"train/loss": loss, "train/lr": run.schedule.last_lr, "train/batch_size": run.stage.batch_size,
               **{STEP_POINT_NAMES[k]: v for k, v in point.items()}}  # fmt: skip
    run.logger.log_metrics(metrics, step=step)


def validate(run: Run) -> dict[str, float]:
    """`validation_step` on the fixed validation batches (this rank's share; counts summed over
    ranks); its duration is kept back from the time budget."""
    started = run.progress.elapsed_s()
    result = with_compile_fallback(
        run, "eval", lambda: validation_step(replace(run.tools, model=run.eval_model), run.val_batches)
    )
    seconds = run.progress.elapsed_s() - started
    run.progress.reserve_s = seconds  # the final validation must fit in the budget too
    return {**result, "val_seconds": seconds}


def on_epoch_end(run: Run, epoch: int, trained: dict[str, Any], validated: dict[str, float] | None) -> None:
    """History row, best score and early stopping, then last.pt (+ best.pt) and history.json."""
    state, t = run.state, run.params.train
    keys = ("val_loss", "val_f1", "val_f1_best", "val_threshold", "val_iou")
    step_s, images = run.monitor.take_epoch()
    row = {
        "epoch": epoch,
        "step": state.step,
        "train_loss": trained["train_loss"],
        **{k: (validated or {}).get(k) for k in keys},
        "lr": trained["lr"],
        "images_per_s": round(run.monitor.images_per_s(), 3),
        "epoch_images": images,
        "epoch_step_s": round(step_s, 3),
        "seconds": round(trained["seconds"], 2),
        "peak_mem_mb": round(run.monitor.memory.peak_mb(), 1),
        "crop": run.stage.crop,
        "batch_size": run.stage.batch_size,
    }
    state.history["epochs"].append(row)
    improved = validated is not None and validated["val_f1_best"] > state.best_f1
    if improved:
        state.best_f1, state.best_epoch = validated["val_f1_best"], epoch
        state.best_threshold, state.bad_validations = validated["val_threshold"], 0
    elif validated is not None:
        state.bad_validations += 1
    state.epoch, state.elapsed_s = epoch, run.progress.elapsed_s()
    if trained["out_of_time"]:
        state.stop_reason = "time budget"
    elif t.patience and state.bad_validations >= t.patience:
        state.stop_reason = "early stop"
    elif epoch == t.epochs:
        state.stop_reason = "epochs"
    if run.is_main:
        write_epoch_outputs(run, improved)
        run.logger.log_metrics(epoch_metrics(row), step=state.step)
        log.info("epoch %d: train loss %s%s", epoch, _number(trained["train_loss"]), _val_text(validated))
    if run.world_size > 1:  # ranks computed the same reason; rank 0's is the one that counts
        state.stop_reason = agree(state.stop_reason)


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The history row as tracker metrics: `val/loss`, `val/f1`, ... and `epoch/...` for the rest, apart
    from the per-step series of the same figures (`train/loss`, `train/images_per_s`, `train/lr`)."""
    names = {k: f"val/{k[4:]}" if k.startswith("val_") else f"epoch/{'number' if k == 'epoch' else k}"
             for k in row if k != "step"}  # fmt: skip
    return {names[k]: float(row[k]) for k in names if isinstance(row[k], int | float)}


def write_epoch_outputs(run: Run, improved: bool) -> None:
    tools = run.tools
    payload = checkpoint_payload(run.state, run.eager_model, tools.optimizer, run.schedule, tools.scaler, run.params)
    save_training_checkpoint(run.train_dir / LAST, payload)
    if improved:
        save_training_checkpoint(run.train_dir / BEST, payload)
    outputs.write_history(run.train_dir, run.state.history)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _val_text(v: dict[str, float] | None) -> str:
    if v is None:
        return ""
    return (
        f", val loss {v['val_loss']:.4f}, F1@0.5 {v['val_f1']:.4f}, "
        f"F1 {v['val_f1_best']:.4f} @ {v['val_threshold']:.2f}, IoU {v['val_iou']:.4f}"
    )


# --------------------------------------------------------------------------- end


def final_validation(epochs: list[dict[str, Any]]) -> dict[str, float | None]:
    """F1 at 0.5 and at the best threshold of the last validated epoch (None before any validation)."""
    last = next((e for e in reversed(epochs) if e["val_f1"] is not None), {})
    return {"final_val_f1": last.get("val_f1"), "final_val_f1_best": last.get("val_f1_best")}


def finish_run(run: Run) -> dict[str, Any]:
    """Summary dict; on rank 0 also train_summary.json, history.json, loss_curve.png and tracker artifacts."""
    state = run.state
    summary = {
        "stop_reason": state.stop_reason or "epochs",
        "epochs": state.epoch,
        "steps": state.step,
        "best_val_f1": state.best_f1 if state.best_f1 >= 0 else None,
        "best_epoch": state.best_epoch,
        "best_threshold": state.best_threshold,
        **final_validation(state.history["epochs"]),
        "nonfinite_steps": state.nonfinite_steps,
        "seconds": round(state.elapsed_s, 2),
        "device": str(run.device),
        "world_size": run.world_size,
        "torch_threads": torch.get_num_threads(),
        "switches": asdict(run.switches),
        "checkpoint": str(run.train_dir / BEST),
        **run.monitor.summary(),
    }
    if run.is_main:
        files = [outputs.write_summary(run.train_dir, summary), outputs.write_history(run.train_dir, state.history),
                 outputs.write_metrics(run.train_dir, summary)]  # fmt: skip
        if state.history["epochs"]:
            files.append(outputs.plot_loss_curve(run.train_dir, state.history))
        for path in files:
            run.logger.log_artifact(path, "train")
        run.logger.log_metrics(
            {
                f"train_summary/{k}": float(v)
                for k, v in summary.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
        log.info("training finished\n%s", outputs.summary_table(summary))
    return summary
