"""`wm predict`: stream images from files/folders/globs through the predictor and write results.

Decoding runs in DataLoader workers (predict.loader_workers; 0 = in this
process) with a bounded prefetch (predict.queue_size), so memory stays flat in
the number of images. Images that fit one tile are batched together; larger
ones go alone (their tiles are batched). Each finished image writes, atomically:
`<name>.mask.png` (0/255), `<name>.prob.png` (probability x 255) and optionally
`<name>.overlay.jpg` (mask tinted red, region boxes, the score against the image threshold; by default
for runs under predict.overlay_auto_images images), then its row in the results table, which names
both thresholds (has_watermark = score >= image_threshold, mask = probability >= threshold). Images over
`predict.stream_megapixels` are decoded and written strip by strip instead
(wmcore.infer.large_images), so memory does not grow with the image size. A rerun skips images
whose row says ok and whose files exist (`force` redoes them); unreadable
inputs (and every non-image file found, wmcore.infer.inputs) become `skipped` rows
with the reason, and the run goes on. The output folder is proved writable before
the model loads; one that turns read-only mid-run ends the run with OutputNotWritable,
every finished image and row intact.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from wmcore.config import Params
from wmcore.errors import WmError
from wmcore.infer.images import DraftedImage, ImageSkip, load_for_working_side, load_rgb, set_pixel_cap, streamable_size
from wmcore.infer.inputs import InputImage, discover_inputs, output_paths
from wmcore.infer.large_images import (
    OVERLAY_QUALITY,
    OVERLAY_RGB,
    NotStreamable,
    PngMaskWriter,
    StreamedImage,
    write_empty_png,
    write_overlay,
)
from wmcore.infer.predictor import Predictor, get_predictor
from wmcore.infer.results_table import ResultsTable
from wmcore.infer.sinks import MaskSummary
from wmcore.runtime.atomic import (
    atomic_open,
    atomic_path,
    check_writable,
    remove_stale_temp_files,
    save_image,
    write_json,
)
from wmcore.runtime.memory import process_peak_rss_mb
from wmcore.runtime.report import console_table

log = logging.getLogger(__name__)

OVERLAY_COLOUR = np.array(OVERLAY_RGB, dtype=np.uint16)


@dataclass
class Decoded:
    """A decoded input (image None when it was skipped, with the reason, or is to be streamed).

    stream: (width, height) of an image too large to decode whole (wmcore.infer.large_images).
    """

    index: int
    image: np.ndarray | None
    reason: str | None
    seconds: float
    stream: tuple[int, int] | None = None


@dataclass
class RunCounts:
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    with_watermark: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class DecodeDataset(torch.utils.data.Dataset):
    """Decodes input files by index (runs inside DataLoader workers)."""

    def __init__(
        self, items: list[InputImage], max_megapixels: float, stream_megapixels: float = 0.0, draft_side: int = 0
    ) -> None:
        self.items, self.max_megapixels, self.stream_megapixels = items, max_megapixels, stream_megapixels
        self.draft_side = draft_side  # JPEGs >= twice this are decoded reduced for their working view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        if self.items[index].skip:  # found not to be an image file: never opened (a FIFO would block)
            return Decoded(index, None, self.items[index].skip, 0.0)
        set_pixel_cap(self.max_megapixels)  # workers are fresh processes: set PIL's cap there too
        start = time.perf_counter()
        path = self.items[index].path
        try:
            size = streamable_size(path, self.max_megapixels, self.stream_megapixels)
            if size is not None:  # decoded band by band by the main process, not here
                return Decoded(index, None, None, time.perf_counter() - start, stream=size)
            image = load_for_working_side(path, self.max_megapixels, self.draft_side)
            return Decoded(index, image, None, time.perf_counter() - start)
        except ImageSkip as skip:
            return Decoded(index, None, skip.reason, time.perf_counter() - start)


def _keep_as_is(item: Decoded) -> Decoded:
    return item


def decode_stream(items: list[InputImage], params: Params) -> Iterator[Decoded]:
    """Decoded inputs in order; at most ~queue_size images wait in memory."""
    pp = params.predict
    workers = min(pp.loader_workers, len(items))
    loader = torch.utils.data.DataLoader(
        DecodeDataset(items, pp.max_image_megapixels, pp.stream_megapixels, pp.global_side if pp.draft_decode else 0),
        batch_size=None,
        num_workers=workers,
        collate_fn=_keep_as_is,
        prefetch_factor=max(1, pp.queue_size // workers) if workers else None,
    )
    yield from loader


def predict_inputs(
    params: Params,
    inputs: list[str],
    out_dir: str,
    model: str | None = None,
    force: bool = False,
    overlay: bool | None = None,
    threshold: float | None = None,
    image_threshold: float | None = None,
) -> dict[str, Any]:
    """Predict every image of `inputs` into `out_dir`; returns (and writes summary.json) the run summary.

    overlay: write overlay JPEGs; None = predict.save_overlay (auto: runs under predict.overlay_auto_images).
    threshold, image_threshold: pixel and has-watermark thresholds instead of the model's calibrated ones.
    Summary keys: processed, skipped (inputs not processed: unreadable, missing, or failed), failed
    (the subset that failed during inference), up_to_date (complete from an earlier run), total,
    with_watermark, images_per_s, seconds, batch_size_final, batch_success_rate, backend, model,
    threshold, image_threshold, overlays, peak_rss_mb.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WmError(f"--out {out}: exists and is not a folder")
    set_pixel_cap(params.predict.max_image_megapixels)
    images, missing = discover_inputs(inputs, exclude=out)
    if not images and missing and all(m.reason == "not found" for m in missing):
        raise WmError(f"nothing to predict: {', '.join(m.arg for m in missing)} not found")
    check_writable(out, "--out")  # before the model loads: a read-only --out is one line, not a traceback
    table = ResultsTable(out)
    if stale := remove_stale_temp_files(out):
        log.info("%s: removed %d temp files left by a killed run", out, stale)
    if overlay is None:
        overlay = overlay_wanted(params.predict.save_overlay, len(images), params.predict.overlay_auto_images)
    probability = params.predict.save_probability
    todo = images if force else _still_to_do(images, table, out, overlay, probability)
    predictor = get_predictor(model, params, int8_calibration=_int8_calibration_files(todo, params))
    predictor.sizer.reset_stats()  # the cached predictor may have served earlier runs
    if threshold is not None or image_threshold is not None:
        predictor = predictor.with_thresholds(threshold, image_threshold)
    run = FolderRun(params, predictor, table, out, todo, overlay=overlay)
    start = time.perf_counter()
    with _compacted(table):  # also after Ctrl-C: the table on disk always has one row per image
        for m in missing:
            run.skip(InputImage(Path(m.arg), m.arg), m.reason, 0.0)
        run.process()
    seconds = time.perf_counter() - start
    summary = run.summary(len(images) - len(todo), len(images) + len(missing), seconds)
    write_json(out / "summary.json", summary)
    print(console_table(run.summary_rows(summary)))
    print(outputs_line(out, overlay, probability))
    return summary


def overlay_wanted(setting: bool | str, n_images: int, auto_below: int) -> bool:
    """predict.save_overlay for a run of `n_images`: true/false as set; auto = fewer than `auto_below` images."""
    return n_images < auto_below if setting == "auto" else bool(setting)


def outputs_line(out: Path, overlay: bool, probability: bool = False) -> str:
    """Where a `wm predict` run wrote its outputs, in one line."""
    pictures = "*.mask.png" + (", *.prob.png" if probability else "") + (", *.overlay.jpg" if overlay else "")
    return f"outputs in {out}/: {pictures} per image; results.csv (one row per input), summary.json"


def predict_images(
    params: Params, items: list[InputImage], out_dir: str | Path, model: str | None = None
) -> dict[str, dict[str, Any]]:
    """Predict exactly `items` into `out_dir` (no discovery, no resume check: the caller chose them).

    Used by the inbox screening (wmcore.infer.screening), whose manifest decides what is new.
    Writes the same outputs and table rows as `predict_inputs`; safe to run concurrently on one
    out_dir (threads or processes). Returns this run's rows by image name.
    """
    out = Path(out_dir)
    table = ResultsTable(out)
    set_pixel_cap(params.predict.max_image_megapixels)
    predictor = get_predictor(model, params, int8_calibration=_int8_calibration_files(items, params))
    overlay = params.predict.save_overlay is True  # auto: a service's chunks get no overlays
    run = FolderRun(params, predictor, table, out, list(items), keep_rows=True, overlay=overlay)
    with _compacted(table):
        run.process()
    return run.rows


def _int8_calibration_files(items: list[InputImage], params: Params) -> list[Path]:
    """Image files for onnx-int8 calibration: the first inputs that are to be decoded."""
    return [i.path for i in items if not i.skip][: params.predict.calibration_images]


@contextlib.contextmanager
def _compacted(table: ResultsTable) -> Iterator[None]:
    """Compact `table` when the block ends, however it ends.

    After an error the compaction is best effort: in a folder that turned read-only or full it
    fails too, and the error that stopped the run is the one to report (the journal keeps every
    row; the next run compacts it).
    """
    try:
        yield
    except BaseException:
        with contextlib.suppress(WmError):
            table.compact()
        raise
    table.compact()


def _still_to_do(
    images: list[InputImage], table: ResultsTable, out: Path, overlay: bool, probability: bool
) -> list[InputImage]:
    """Images whose row is not ok or whose output files are not all there."""
    rows = table.load()

    def complete(im: InputImage) -> bool:
        if rows.get(im.name, {}).get("status") != "ok":
            return False
        try:
            return all(p.is_file() for p in output_paths(out, im.name, overlay, probability).values())
        except ValueError:
            return False

    return [im for im in images if not complete(im)]


class FolderRun:
    """One pass over the images still to do: decode, batch, predict, write, record."""

    def __init__(
        self,
        params: Params,
        predictor: Predictor,
        table: ResultsTable,
        out: Path,
        todo: list[InputImage],
        keep_rows: bool = False,
        overlay: bool = False,
    ) -> None:
        self.params, self.predictor, self.table, self.out, self.todo = params, predictor, table, out, todo
        self.overlay = overlay
        self.counts = RunCounts()
        self.bar: tqdm | None = None
        # Rows by name for callers that want them (screening chunks); off for whole folders,
        # whose memory must stay flat in the number of images.
        self.rows: dict[str, dict[str, Any]] = {}
        self.keep_rows = keep_rows

    def _record(self, row: dict[str, Any]) -> None:
        self.table.append(row)
        if self.keep_rows:
            self.rows[row["name"]] = row

    def process(self) -> None:
        tile = self.params.predict.tile_size
        pending: list[Decoded] = []
        bar = tqdm(total=len(self.todo), unit="img", desc="predict", dynamic_ncols=True)
        # Skip warnings print above the bar, not through it. The redirect swaps the root logger's
        # handlers and is not thread-safe, so chunks running in worker threads leave logging alone.
        redirect = logging_redirect_tqdm() if threading.current_thread() is threading.main_thread() else nullcontext()
        with redirect, bar as self.bar:
            for item in decode_stream(self.todo, self.params):
                if item.stream is not None:
                    self.flush(pending)  # rows stay in input order
                    self.run_streamed(item)
                    continue
                if item.image is None:
                    self.skip(self.todo[item.index], item.reason or "unreadable", item.seconds)
                    continue
                pending.append(item)
                large = max(item.image.shape[:2]) > tile
                if large or len(pending) >= self.predictor.sizer.size:
                    self.flush(pending)
            self.flush(pending)

    def flush(self, pending: list[Decoded]) -> None:
        """Predict the pending images together, write their outputs and rows, empty `pending`."""
        if not pending:
            return
        start = time.perf_counter()
        try:
            results = self.predictor.predict_masks([d.image for d in pending])
        except WmError as exc:  # out of memory even at the smallest batch: these fail, the rest go on
            for d in pending:
                self.counts.failed += 1
                self.skip(self.todo[d.index], f"inference failed: {exc}", d.seconds)
            pending.clear()
            return
        share = (time.perf_counter() - start) / len(pending)
        for d, result in zip(pending, results, strict=True):
            self.finish(self.todo[d.index], d, result, share)
        if self.bar is not None:
            self.bar.set_postfix(skipped=self.counts.skipped, batch=self.predictor.sizer.size, refresh=False)
        pending.clear()

    def run_streamed(self, decoded: Decoded) -> None:
        """Predict one very large image band by band, its PNGs written as rows finish, then its row.

        Falls back to decoding it whole when libvips cannot read it as load_rgb would.
        """
        item, (width, height) = self.todo[decoded.index], decoded.stream
        start = time.perf_counter()
        try:
            files = output_paths(self.out, item.name, self.overlay, self.params.predict.save_probability)
            source = StreamedImage(item.path, width, height)
        except ValueError as exc:
            self.skip(item, str(exc), decoded.seconds)
            return
        except NotStreamable as exc:
            log.info("%s; decoding it whole", exc)
            self._decode_whole(decoded)
            return
        try:
            with atomic_open(files["mask"]) as mask_fh, (
                atomic_open(files["prob"]) if "prob" in files else nullcontext()
            ) as prob_fh:
                writer = PngMaskWriter(mask_fh, prob_fh, width, height)
                result = self.predictor.predict_streamed(source, writer)
                writer.close()
            if result.gated:  # the rows went out before the score was known: the image was called clean
                with atomic_open(files["mask"]) as mask_fh:
                    write_empty_png(mask_fh, width, height)
            if "overlay" in files:
                with atomic_path(files["overlay"]) as tmp:
                    write_overlay(source, files["mask"], tmp)
        except ImageSkip as skip:  # found corrupt mid-way: the temp files are gone, the run goes on
            self.skip(item, skip.reason, decoded.seconds + time.perf_counter() - start)
            return
        except WmError as exc:  # out of memory even at the smallest batch
            self.counts.failed += 1
            self.skip(item, f"inference failed: {exc}", decoded.seconds)
            return
        finally:
            source.close()
        self._record_ok(item, result, decoded.seconds + time.perf_counter() - start)

    def _decode_whole(self, decoded: Decoded) -> None:
        item = self.todo[decoded.index]
        start = time.perf_counter()
        try:
            image = load_rgb(item.path, self.params.predict.max_image_megapixels)
        except ImageSkip as skip:
            self.skip(item, skip.reason, decoded.seconds)
            return
        self.flush([Decoded(decoded.index, image, None, decoded.seconds + time.perf_counter() - start)])

    def finish(self, item: InputImage, decoded: Decoded, result: MaskSummary, infer_seconds: float) -> None:
        """Write one image's outputs, then its row (so a row 'ok' implies complete files)."""
        start = time.perf_counter()
        try:
            files = output_paths(self.out, item.name, self.overlay, self.params.predict.save_probability)
        except ValueError as exc:
            self.skip(item, str(exc), decoded.seconds)
            return
        write_outputs(files, decoded.image, result, self.overlay_label(result.score))
        self._record_ok(item, result, decoded.seconds + infer_seconds + time.perf_counter() - start)

    def overlay_label(self, score: float) -> str:
        """The overlay's caption: the score against the image threshold, and what it means."""
        threshold = self.predictor.image_threshold
        verdict = "watermark" if score >= threshold else "clean"
        return f"{verdict}: score {score:.2f} {'>=' if score >= threshold else '<'} {threshold:.2f}"

    def _record_ok(self, item: InputImage, result: MaskSummary, seconds: float) -> None:
        has_mark = result.score >= self.predictor.image_threshold
        self._record({
            "name": item.name,
            "path": str(item.path),
            "status": "ok",
            "reason": "",
            "score": round(result.score, 6),
            "image_threshold": round(self.predictor.image_threshold, 6),
            "has_watermark": has_mark,
            "threshold": round(self.predictor.threshold, 6),
            "area_fraction": round(result.area_fraction, 6),
            "n_regions": len(result.regions),
            "boxes": [r.as_list() for r in result.regions],
            "width": result.width,
            "height": result.height,
            "seconds": round(seconds, 4),
        })  # fmt: skip
        self.counts.processed += 1
        self.counts.with_watermark += int(has_mark)
        self._tick()

    def skip(self, item: InputImage, reason: str, seconds: float) -> None:
        """Record an input that was not processed, with the reason."""
        log.warning("skipped %s: %s", item.path, reason)
        self._record({"name": item.name, "path": str(item.path), "status": "skipped", "reason": reason,
                      "boxes": [], "seconds": round(seconds, 4)})  # fmt: skip
        self.counts.skipped += 1
        kind = reason.split(":")[0]
        self.counts.reasons[kind] = self.counts.reasons.get(kind, 0) + 1
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def summary(self, up_to_date: int, total: int, seconds: float) -> dict[str, Any]:
        c, p = self.counts, self.predictor
        return {
            "processed": c.processed,
            "skipped": c.skipped,
            "failed": c.failed,
            "up_to_date": up_to_date,
            "total": total,
            "with_watermark": c.with_watermark,
            "images_per_s": round(c.processed / seconds, 3) if seconds > 0 else 0.0,
            "seconds": round(seconds, 3),
            **p.stats(),
            "backend": p.backend.name,
            "model": p.identity,
            "threshold": p.threshold,
            "image_threshold": p.image_threshold,
            "overlays": self.overlay,
            "peak_rss_mb": round(process_peak_rss_mb(), 1),
            "skip_reasons": dict(c.reasons),
        }

    def summary_rows(self, summary: dict[str, Any]) -> list[tuple[str, str]]:
        keys = ("processed", "with_watermark", "skipped", "failed", "up_to_date", "images_per_s",
                "batch_size_final", "batch_success_rate", "backend")  # fmt: skip
        rows = [(k, str(summary[k])) for k in keys]
        return rows + [(f"skipped: {reason}", str(n)) for reason, n in sorted(self.counts.reasons.items())]


def write_outputs(
    files: dict[str, Path], image: np.ndarray | DraftedImage, result: MaskSummary, label: str | None = None
) -> None:
    """Write mask, probability and (if asked) overlay images atomically; `label` captions the overlay."""
    save_image(files["mask"], Image.fromarray(result.mask.view(np.uint8) * np.uint8(255), mode="L"))
    if "prob" in files:  # smooth 8-bit maps: level 1 deflate is ~2x faster than 6 here, a little larger
        save_image(files["prob"], Image.fromarray(result.prob_u8, mode="L"), compress_level=1)
    if "overlay" in files:
        boxes = [r.as_list() for r in result.regions]
        pixels = image.full() if isinstance(image, DraftedImage) else image
        picture = overlay_image(pixels, result.mask, boxes=boxes, label=label)
        save_image(files["overlay"], Image.fromarray(picture), quality=OVERLAY_QUALITY)


def overlay_image(
    image: np.ndarray, mask: np.ndarray, rows: int = 512, boxes: list[list[int]] | None = None, label: str | None = None
) -> np.ndarray:
    """uint8 (H, W, 3) copy of `image` with mask pixels blended 50% towards red (strip by strip), each box
    [x0, y0, x1, y1] (px, inclusive) outlined in red and `label` written in the top-left corner."""
    out = image.copy()
    for y in range(0, image.shape[0], rows):
        strip, sel = out[y : y + rows], mask[y : y + rows]
        strip[sel] = ((strip[sel].astype(np.uint16) + OVERLAY_COLOUR) // 2).astype(np.uint8)
    if not boxes and not label:
        return out
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    width = max(1, min(out.shape[:2]) // 200)
    for x0, y0, x1, y1 in boxes or []:
        draw.rectangle((x0, y0, x1, y1), outline=OVERLAY_RGB, width=width)
    if label:
        font = ImageFont.load_default(size=max(10, min(out.shape[:2]) // 24))
        left, top, right, bottom = draw.textbbox((4, 4), label, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 255), font=font)
    return np.asarray(picture)
