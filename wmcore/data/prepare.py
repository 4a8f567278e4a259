"""`wm prepare`: generate (and optionally import) the versioned watermark dataset.

`run_prepare(params)` writes, under `paths.prepared`:

    <split>/images/<id>.png   RGB 8-bit, after the optional JPEG re-compression (stored lossless)
    <split>/masks/<id>.png    L 0/255: 255 exactly where alpha / 255 > prepare.mask_alpha_threshold
    <split>/alpha/<id>.png    L 0..255: the watermark's own alpha, round(alpha * 255)
    manifest.jsonl            one JSON object per sample (split, id, paths, sha256, size, wm_fraction, ...)
    stats.json                counts, style/source histograms, backgrounds used/skipped, licenses, timings
    contact_sheet.png         16 varied samples beside their masks

for split in train / val / test. Everything is built in a hidden folder beside the target and
renamed into place at the end: an interrupted run never leaves a half dataset. That folder is named
after a fingerprint of the prepare params, seed and generator code, so a rerun with the same
inputs resumes it (finished samples are kept). Same params -> byte-identical images, masks,
alphas, manifest and contact sheet, with any number of `prepare.workers`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wmcore.config import Params
from wmcore.data.backgrounds import BackgroundCatalog, discover_backgrounds
from wmcore.data.contact_sheet import write_contact_sheet
from wmcore.data.fonts import FONT_LICENSES
from wmcore.data.generator import GeneratorContext, generate_sample
from wmcore.data.importer import import_dataset, import_folders
from wmcore.runtime.atomic import write_json, write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SAMPLE_FOLDERS = ("images", "masks", "alpha")
PARTIAL_MARK = ".partial-"
# The modules whose code decides the dataset's bytes (their source is part of the resume fingerprint).
GENERATOR_MODULES = (
    "backgrounds", "compose", "contact_sheet", "fonts", "generator", "icons", "importer", "layer", "phrases",
    "prepare", "procedural", "render",
)


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def encode_png(array: np.ndarray, mode: str, level: int) -> bytes:
    """PNG bytes of a uint8 array (no timestamp or other varying chunk: same array, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def write_sample_files(
    work: Path, split: str, sid: str, image: np.ndarray, alpha: np.ndarray, mask: np.ndarray, facts: dict, level: int
) -> dict:
    """Write the three PNGs of one sample into the work folder and return its manifest row.

    Plain writes, not `atomic.write_bytes`: the whole work folder is renamed into place atomically
    at the end, and a sample only counts as done once its row file exists (written after these),
    so a per-file fsync + rename (measured 4-8 ms per file, ~15 s per default run) buys nothing.
    """
    rel = {kind: f"{split}/{kind}/{sid}.png" for kind in SAMPLE_FOLDERS}
    image_png = encode_png(image, "RGB", level)
    (work / rel["images"]).write_bytes(image_png)
    (work / rel["masks"]).write_bytes(encode_png(mask, "L", level))
    (work / rel["alpha"]).write_bytes(encode_png(alpha, "L", level))
    fraction = float(mask.mean()) / 255.0
    return {
        "split": split, "id": sid, "image": rel["images"], "mask": rel["masks"], "alpha": rel["alpha"],
        "sha256": hashlib.sha256(image_png).hexdigest(), "width": int(image.shape[1]), "height": int(image.shape[0]),
        "wm_fraction": round(fraction, 6), "has_watermark": fraction > 0, "styles": facts["styles"],
        "source": facts["source"], "scene_text": bool(facts["scene_text"]),
    }


# --------------------------------------------------------------------------- generation (one process or a pool)

_WORKER: dict = {}


def _init_worker(ctx: GeneratorContext, work: str) -> None:
    _WORKER["ctx"], _WORKER["work"] = ctx, Path(work)


def _make_one(task: tuple[str, int]) -> dict:
    """Generate sample `task` = (split, index), or load its row if a resumed run already finished it."""
    ctx, work = _WORKER["ctx"], _WORKER["work"]
    split, index = task
    sid = sample_id(split, index)
    done = work / "rows" / f"{sid}.json"
    if done.exists():
        try:
            return {**json.loads(done.read_text(encoding="utf-8")), "_resumed": True}
        except json.JSONDecodeError:  # killed while writing the row: make the sample again
            pass
    sample = generate_sample(ctx, split, index)
    facts = {"styles": sample.styles, "source": sample.source, "scene_text": sample.scene_text}
    level = ctx.prepare.png_compress_level
    row = write_sample_files(work, split, sid, sample.image, sample.alpha, sample.mask, facts, level)
    done.write_text(json.dumps(row, sort_keys=True), encoding="utf-8")  # last: a row file means all three PNGs are complete
    return row


def generate_all(ctx: GeneratorContext, work: Path, workers: int) -> list[dict]:
    """Make every sample of every split (in a pool when workers > 0), with a progress bar; rows in manifest order."""
    counts = {"train": ctx.prepare.n_train, "val": ctx.prepare.n_val, "test": ctx.prepare.n_test}
    tasks = [(split, i) for split in SPLITS for i in range(counts[split])]
    bar = tqdm(total=len(tasks), desc="prepare", unit="img", mininterval=1.0, dynamic_ncols=True)
    try:
        if workers <= 0:
            _init_worker(ctx, str(work))
            rows = [_advance(bar, _make_one(t)) for t in tasks]
        else:
            # spawn, not fork: the parent may hold torch/Prefect threads; workers only need numpy and PIL.
            mp = multiprocessing.get_context("spawn")
            with mp.Pool(workers, initializer=_init_worker, initargs=(ctx, str(work))) as pool:
                rows = [_advance(bar, r) for r in pool.imap(_make_one, tasks, chunksize=4)]
    finally:
        bar.close()
    return rows


def _advance(bar: tqdm, row: dict) -> dict:
    bar.update(1)
    return row


# --------------------------------------------------------------------------- the work folder and the swap


def fingerprint(params: Params) -> str:
    """12 hex digits naming what the dataset is made from: prepare params, seed and the generator's code."""
    h = hashlib.sha256(json.dumps({"prepare": params.prepare.model_dump(mode="json"), "seed": params.base.seed},
                                  sort_keys=True).encode())
    for module in GENERATOR_MODULES:
        h.update((Path(__file__).parent / f"{module}.py").read_bytes())
    return h.hexdigest()[:12]


def open_work_dir(target: Path, fp: str) -> tuple[Path, bool]:
    """The hidden folder the dataset is built in (resumed if it exists); stale folders of other params are removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}{PARTIAL_MARK}{fp}")
    for stale in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        if stale != work and stale.is_dir():
            log.info("removing the unfinished build of other params: %s", stale)
            shutil.rmtree(stale)
    resumed = work.is_dir()
    for folder in ["rows", *(f"{split}/{kind}" for split in SPLITS for kind in SAMPLE_FOLDERS)]:
        (work / folder).mkdir(parents=True, exist_ok=True)
    return work, resumed


def swap_into_place(work: Path, target: Path) -> None:
    """Rename the finished `work` folder to `target`; an old dataset is moved aside first, then deleted."""
    shutil.rmtree(work / "rows", ignore_errors=True)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(work, target)
    if old.exists():
        shutil.rmtree(old)


# --------------------------------------------------------------------------- manifest, stats, summary


def write_manifest(path: Path, rows: list[dict]) -> None:
    lines = [json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, sort_keys=True, ensure_ascii=False) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def build_stats(rows: list[dict], catalog: BackgroundCatalog, import_report: dict | None, params: Params) -> dict:
    """The stats.json content (timings are added by the caller)."""
    counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    generated = [r for r in rows if not r["source"].startswith("import:")]
    used = Counter(ref.source for ref in catalog.photos)
    if catalog.procedural:
        used["procedural"] = len(catalog.procedural)
    return {
        "counts": {**counts, "total": len(rows)},
        "watermarked": {s: sum(r["split"] == s and r["has_watermark"] for r in rows) for s in SPLITS},
        "clean": {s: sum(r["split"] == s and not r["has_watermark"] for r in rows) for s in SPLITS},
        "scene_text": {s: sum(r["split"] == s and r["scene_text"] for r in rows) for s in SPLITS},
        "mean_wm_fraction": round(float(np.mean([r["wm_fraction"] for r in rows])) if rows else 0.0, 6),
        "primary_styles": dict(Counter(r["styles"][0] for r in generated).most_common()),
        "style_tags": dict(Counter(t for r in generated for t in r["styles"]).most_common()),
        "sources": dict(Counter(r["source"] for r in rows).most_common()),
        "source_groups": dict(Counter(r["source"].split(":")[0] for r in rows).most_common()),
        "backgrounds_used": dict(used),
        "backgrounds_skipped": {"count": len(catalog.skipped), "files": catalog.skipped},
        "background_sources": catalog.sources,
        "licenses": {**{s: v["license"] for s, v in catalog.sources.items()}, **{f"font:{k}": v for k, v in FONT_LICENSES.items()}},
        "import": import_report,
        "mask_alpha_threshold": params.prepare.mask_alpha_threshold,
        "fingerprint": fingerprint(params),
    }


def summary_table(stats: dict) -> str:
    """A short plain-text table of the prepared dataset for the log."""
    lines = [f"{'split':<6} {'samples':>8} {'watermarked':>12} {'clean':>6} {'scene_text':>11}"]
    for s in SPLITS:
        lines.append(f"{s:<6} {stats['counts'][s]:>8} {stats['watermarked'][s]:>12} {stats['clean'][s]:>6} {stats['scene_text'][s]:>11}")
    top = ", ".join(f"{k} {v}" for k, v in list(stats["primary_styles"].items())[:6])
    groups = ", ".join(f"{k} {v}" for k, v in stats["source_groups"].items())
    t = stats["timings_s"]
    lines += [f"styles: {top}", f"backgrounds: {groups} ({stats['backgrounds_skipped']['count']} files skipped)",
              f"time: {t['total']:.1f} s ({t['per_sample_ms']:.0f} ms/sample, {stats['resumed']} resumed)"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def run_prepare(params: Params) -> dict:
    """Build the dataset under params.paths.prepared (see the module docstring); returns the stats dict.

    Raises WmError (one line) when no background can be found or the import folder is malformed.
    """
    p = params.prepare
    target = Path(params.paths.prepared)
    t0 = time.perf_counter()
    if p.import_dir:
        import_folders(p)  # fail on a wrong import_dir before minutes of generation
    if p.heldout_style_share > 0:
        # The registries (render.STYLES, phrases.PHRASE_KINDS, fonts, icons) are keyed by stable names for it.
        log.warning("prepare.heldout_style_share=%s: the style-held-out split is not implemented yet; "
                    "every split uses every style", p.heldout_style_share)
    catalog = discover_backgrounds(p)
    t_discover = time.perf_counter() - t0
    work, resumed = open_work_dir(target, fingerprint(params))
    if resumed:
        log.info("resuming the unfinished build in %s", work)
    ctx = GeneratorContext(p, params.base.seed, catalog)
    rows = generate_all(ctx, work, p.workers)
    t_generate = time.perf_counter() - t0 - t_discover
    n_resumed = sum(bool(r.get("_resumed")) for r in rows)
    import_report = None
    if p.import_dir:
        level = p.png_compress_level
        imported, import_report = import_dataset(p, lambda s, i, im, a, m, f: write_sample_files(work, s, i, im, a, m, f, level))
        rows += imported
        rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["id"]))
    t_import = time.perf_counter() - t0 - t_discover - t_generate
    write_manifest(work / "manifest.jsonl", rows)
    shown = write_contact_sheet(work, rows, work / "contact_sheet.png", p.png_compress_level)
    stats = build_stats(rows, catalog, import_report, params)
    total = time.perf_counter() - t0
    fresh = max(1, p.n_train + p.n_val + p.n_test - n_resumed)
    stats["contact_sheet_ids"] = shown
    stats["resumed"] = n_resumed
    stats["timings_s"] = {
        "discover": round(t_discover, 3), "generate": round(t_generate, 3), "import": round(t_import, 3),
        "total": round(total, 3), "per_sample_ms": round(1000 * t_generate / fresh, 2), "workers": p.workers,
    }
    write_json(work / "stats.json", stats)
    swap_into_place(work, target)
    log.info("prepared %d samples in %s (%.1f s with the swap)\n%s", len(rows), target, time.perf_counter() - t0,
             summary_table(stats))
    return stats
