"""`wm prepare`: generate (and optionally import) the versioned watermark dataset.

`run_prepare(params)` writes, under `paths.prepared`:

    <split>/images/<id>.png   RGB 8-bit, after the optional JPEG re-compression (stored lossless)
    <split>/masks/<id>.png    L 0/255: 255 exactly where alpha / 255 > prepare.mask_alpha_threshold
    <split>/alpha/<id>.png    L 0..255: the watermark's own alpha, round(alpha * 255)
    manifest.jsonl            one JSON object per sample (split, id, paths, sha256, size, wm_fraction,
                              styles, source, background_kind, fonts, phrase_kinds, ...)
    stats.json                counts, style/source histograms, backgrounds used/skipped, licenses,
                              the held-out names ("heldout"), timings
    contact_sheet.png         16 varied samples beside their masks

for split in train / val / test, plus test_heldout (`prepare.n_test_heldout` samples drawn only from
the fonts, phrase kinds, styles and backgrounds that `prepare.heldout_style_share` keeps out of the
other three; see generator.py) when both are > 0. Everything is built in a hidden folder beside the target and
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
from wmcore.data.backgrounds import BackgroundCatalog, discover_backgrounds, load_hard_negatives
from wmcore.data.contact_sheet import write_contact_sheet
from wmcore.data.fonts import FONT_LICENSES, FONT_PACK_DIR
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.data.generator import GeneratorContext, HeldoutPlan, generate_sample, plan_heldout
from wmcore.data.importer import import_dataset, import_folders
from wmcore.data.kept_out import REGISTRIES, read_dataset_kept_out
from wmcore.errors import WmError
from wmcore.runtime.atomic import write_json, write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", HELDOUT_SPLIT)
SAMPLE_FOLDERS = ("images", "masks", "alpha")
PARTIAL_MARK = ".partial-"
# The modules whose code decides the dataset's bytes (their source is part of the resume fingerprint).
GENERATOR_MODULES = (
    "backgrounds", "compose", "contact_sheet", "fonts", "generator", "icons", "importer", "layer", "phrases",
    "prepare", "procedural", "render",
)  # plus the manifests of the corpus and the font pack (data/corpus, data/fonts), see `fingerprint`


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
        # Generated samples only (imported ones have none): what it was drawn from, for held-out checks and
        # for evaluation's false-positive area on clean pages vs photos.
        "background_kind": facts.get("background_kind"), "fonts": facts.get("fonts", []),
        "phrase_kinds": facts.get("phrase_kinds", []), "hard_negative": bool(facts.get("hard_negative", False)),
        "native_view": bool(facts.get("native_view", False)),
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
    facts = {"styles": sample.styles, "source": sample.source, "scene_text": sample.scene_text,
             "background_kind": sample.background_kind, "fonts": sample.fonts, "phrase_kinds": sample.phrase_kinds,
             "hard_negative": sample.hard_negative, "native_view": sample.native_view}
    level = ctx.prepare.png_compress_level
    row = write_sample_files(work, split, sid, sample.image, sample.alpha, sample.mask, facts, level)
    done.write_text(json.dumps(row, sort_keys=True), encoding="utf-8")  # last: a row file means all three PNGs are complete
    return row


def split_counts(ctx: GeneratorContext) -> dict[str, int]:
    """Samples to generate per split; test_heldout only when a held-out plan exists."""
    p = ctx.prepare
    heldout = p.n_test_heldout if ctx.heldout.active() else 0
    return {"train": p.n_train, "val": p.n_val, "test": p.n_test, HELDOUT_SPLIT: heldout}


def generate_all(ctx: GeneratorContext, work: Path, workers: int) -> list[dict]:
    """Make every sample of every split (in a pool when workers > 0), with a progress bar; rows in manifest order."""
    counts = split_counts(ctx)
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
    mined = [Path(params.paths.hard_negatives)] if params.prepare.hard_negative_share > 0 else []
    # native views: drawn for prepare.native_share, and hard negatives mined on them use them whatever the share
    views = [Path(params.paths.corpus_native_train) / "manifest.jsonl"] if (
        params.prepare.native_share > 0 or mined) else []  # fmt: skip
    plan = [Path(params.prepare.heldout_from) / "stats.json"] if params.prepare.heldout_from else []
    for manifest in (Path(params.paths.corpus) / "manifest.jsonl", FONT_PACK_DIR / "manifest.jsonl", *mined, *views, *plan):
        h.update(manifest.read_bytes() if manifest.is_file() else b"-")  # rebuilt or re-mined inputs
    return h.hexdigest()[:12]


def open_work_dir(target: Path, fp: str, splits: list[str]) -> tuple[Path, bool]:
    """The hidden folder the dataset is built in (resumed if it exists), with sample folders for `splits`.

    Stale folders of other params are removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}{PARTIAL_MARK}{fp}")
    for stale in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        if stale != work and stale.is_dir():
            log.info("removing the unfinished build of other params: %s", stale)
            shutil.rmtree(stale)
    resumed = work.is_dir()
    for folder in ["rows", *(f"{split}/{kind}" for split in splits for kind in SAMPLE_FOLDERS)]:
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


def read_heldout_plan(prepared: str) -> HeldoutPlan:
    """The held-out names another prepared dataset kept out (its stats.json), for prepare.heldout_from.

    Raises WmError naming the key when the file is missing, unreadable or has no held-out plan.
    """
    kept, why = read_dataset_kept_out(prepared)
    if kept is None:
        raise WmError(f"prepare.heldout_from: {why}")
    plan = HeldoutPlan(**{r: tuple(kept[r]) for r in REGISTRIES})
    if not plan.active():
        raise WmError(f"prepare.heldout_from: {Path(prepared) / 'stats.json'} holds nothing out (it was built "
                      "without a test_heldout split)")
    return plan


def heldout_report(plan: HeldoutPlan, params: Params, n_samples: int) -> dict:
    """stats.json "heldout": the share, the split's size and the held-out names per registry."""
    return {
        "share": params.prepare.heldout_style_share, "split": HELDOUT_SPLIT, "samples": n_samples,
        "fonts": list(plan.fonts), "phrase_kinds": list(plan.phrase_kinds), "styles": list(plan.styles),
        "photos": list(plan.photos), "procedural": list(plan.procedural),
    }


def build_stats(
    rows: list[dict], catalog: BackgroundCatalog, import_report: dict | None, params: Params, plan: HeldoutPlan
) -> dict:
    """The stats.json content (timings are added by the caller); test_heldout appears only when it has samples."""
    splits = [s for s in SPLITS if s != HELDOUT_SPLIT or any(r["split"] == s for r in rows)]
    counts = {s: sum(r["split"] == s for r in rows) for s in splits}
    generated = [r for r in rows if not r["source"].startswith("import:")]
    used = Counter(ref.source for ref in catalog.photos)
    if catalog.procedural:
        used["procedural"] = len(catalog.procedural)
    return {
        "counts": {**counts, "total": len(rows)},
        "watermarked": {s: sum(r["split"] == s and r["has_watermark"] for r in rows) for s in splits},
        "clean": {s: sum(r["split"] == s and not r["has_watermark"] for r in rows) for s in splits},
        "scene_text": {s: sum(r["split"] == s and r["scene_text"] for r in rows) for s in splits},
        # backgrounds cropped around a mined hard negative (prepare.hard_negative_share of the photos)
        "hard_negative": {s: sum(r["split"] == s and bool(r.get("hard_negative")) for r in rows) for s in splits},
        # photo backgrounds cut from a native view (prepare.native_share of the draws of photos that have one)
        "native_view": {s: sum(r["split"] == s and bool(r.get("native_view")) for r in rows) for s in splits},
        "background_kinds": {s: dict(Counter(r.get("background_kind") or "imported" for r in rows if r["split"] == s))
                             for s in splits},
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
        "heldout": heldout_report(plan, params, counts.get(HELDOUT_SPLIT, 0)),
        "fingerprint": fingerprint(params),
    }


def summary_table(stats: dict) -> str:
    """A short plain-text table of the prepared dataset for the log."""
    lines = [f"{'split':<12} {'samples':>8} {'watermarked':>12} {'clean':>6} {'scene_text':>11} {'hard_neg':>9} "
             f"{'native':>7}"]
    for s in (s for s in SPLITS if s in stats["counts"]):
        lines.append(f"{s:<12} {stats['counts'][s]:>8} {stats['watermarked'][s]:>12} {stats['clean'][s]:>6} "
                     f"{stats['scene_text'][s]:>11} {stats['hard_negative'][s]:>9} {stats['native_view'][s]:>7}")
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
    catalog = discover_backgrounds(p, params.paths.corpus, params.paths.corpus_native_train)
    plan = plan_heldout(p, params.base.seed, catalog) if p.heldout_from is None else read_heldout_plan(p.heldout_from)
    if (p.heldout_style_share > 0) != (p.n_test_heldout > 0):
        log.info("no %s split: it needs prepare.heldout_style_share > 0 and prepare.n_test_heldout > 0", HELDOUT_SPLIT)
    t_discover = time.perf_counter() - t0
    hard = load_hard_negatives(params.paths.hard_negatives, catalog.photos, params.paths.corpus) if (
        p.hard_negative_share > 0) else []  # fmt: skip
    if p.hard_negative_share > 0:
        log.info("%d hard negatives on %d photos from %s", len(hard), len({h.ref.id for h in hard}),
                 params.paths.hard_negatives)  # fmt: skip
    ctx = GeneratorContext(p, params.base.seed, catalog, plan, tuple(hard))
    counts = split_counts(ctx)
    work, resumed = open_work_dir(target, fingerprint(params), [s for s in SPLITS if counts[s]])
    if resumed:
        log.info("resuming the unfinished build in %s", work)
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
    stats = build_stats(rows, catalog, import_report, params, plan)
    total = time.perf_counter() - t0
    fresh = max(1, sum(counts.values()) - n_resumed)
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
