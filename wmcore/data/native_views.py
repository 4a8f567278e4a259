"""Native views: the corpus's real clean val/test pictures at the resolution their packages ship them.

The corpus (`wmcore.data.corpus`) stores every picture downscaled to `images.long_side` (768 px), the
predictor's working side. So the real-photo false-positive figures `wm evaluate` calibrates on never
went through what a user's photo goes through: a working view downscaled from a larger image, then
native-resolution refinement where that view fires, on pixels as sharp as a camera makes them. On
the originals of the corpus's larger val/test pictures the shipped model flagged 7 of 79 against 3 of
79 for their stored copies (bench/real_fullres.py), mostly through native refinement of bridges,
shop signs and product labels that the stored copies never reach.

A native view is a centred window of at most `side` x `side` px of such a picture, cut at its
package's own resolution (after the corpus row's own view box, if any), larger than the working side
on its long side and so refined as a user's photo would be. Built from the corpus manifest alone:
each package is fetched again by its pinned URL and sha256 (cached under the download folder), so
the views carry the corpus rows' provenance and split, and a split the corpus never trains on stays
never trained on. Stored as WebP in <out>/<split>/<corpus stem>.webp with manifest.jsonl (the corpus
row's package, license and category, the window in source pixels, the stored file's sha256) and a
README; built beside the target and renamed into place; committed to git like the corpus (a clone
or a GPU machine needs no registry).

    python -m wmcore.data.native_views --corpus data/corpus --out data/corpus-native --downloads DIR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from wmcore.data.corpus import (
    MANIFEST,
    decode_picture,
    folder_bytes,
    open_work_folder,
    read_package,
    swap_into_place,
    write_jsonl,
)
from wmcore.data.packages import fetch
from wmcore.errors import WmError

log = logging.getLogger(__name__)

SPLITS = ("val", "test")  # never train: these views measure false positives only
TRAIN_SPLITS = ("train",)  # a folder of their own (paths.corpus_native_train): backgrounds and mining ground
SIDE = 1024  # px, a view's longest side: above the 768 px working side, so native refinement runs
WEBP_QUALITY = 80  # 79 views of 1024 px: 6.2 MiB (JPEG q80 9.0 MiB, WebP q90 9.9 MiB)
MAX_MIB = 10.0
# Provenance copied from the corpus row: the view is a part of that picture.
PROVENANCE = ("package", "package_version", "package_url", "package_sha256", "package_kind", "path", "license",
              "license_basis", "copyright", "category", "has_text", "page", "split")  # fmt: skip


def corpus_manifest(corpus: Path) -> list[dict]:
    """The corpus's manifest rows; WmError when the corpus is not built."""
    path = corpus / MANIFEST
    if not path.is_file():
        raise WmError(f"{path}: corpus manifest not found; build the corpus first (`wm corpus`)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wanted_rows(rows: list[dict], splits: tuple[str, ...] = SPLITS) -> list[dict]:
    """The rows of `splits` stored smaller than their source: the pictures whose native view is larger
    than their stored copy."""
    return [r for r in rows if r["split"] in splits
            and max(r["source_width"], r["source_height"]) > max(r["width"], r["height"])]  # fmt: skip


def centre_window(size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred window of at most side x side px of a picture of size (w, h)."""
    w, h = size
    cw, ch = min(w, side), min(h, side)
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def source_box(row_crop: list[int] | None, window: tuple[int, int, int, int]) -> list[int]:
    """The window in the package file's pixels: offset by the corpus row's own view box, if it has one."""
    dx, dy = (row_crop[0], row_crop[1]) if row_crop else (0, 0)
    return [window[0] + dx, window[1] + dy, window[2] + dx, window[3] + dy]


def source_picture(data: bytes, row: dict) -> Image.Image:
    """A corpus row's picture at its package's resolution (its view box cut, transparency flattened);
    WmError when the file no longer decodes to the size the manifest recorded (a changed package)."""
    img, why = decode_picture(data, 1)
    if img is None:
        raise WmError(f"{row['package']}: {row['path']}: {why}")
    if row.get("crop"):
        img = img.crop(tuple(row["crop"]))
    if img.size != (row["source_width"], row["source_height"]):
        raise WmError(f"{row['package']}: {row['path']}: {img.size[0]}x{img.size[1]} px, the corpus manifest "
                      f"recorded {row['source_width']}x{row['source_height']}")  # fmt: skip
    return img


def package_files(rows: list[dict], downloads: Path) -> Iterator[tuple[dict, bytes]]:
    """(row, the file's bytes in its package) for corpus rows, each package fetched by its pinned URL and
    sha256 (cached in `downloads`) and read once; WmError when a file is not in its package."""
    by_package: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_package[row["package"]].append(row)
    for name, pkg_rows in sorted(by_package.items()):
        first = pkg_rows[0]
        path = fetch(f"{name} {first['package_version']}", [first["package_url"]], first["package_sha256"], downloads)
        files = read_package(path, first["package_kind"], sorted({r["path"] for r in pkg_rows}), "").files
        for row in pkg_rows:
            if row["path"] not in files:
                raise WmError(f"{name} {first['package_version']}: {row['path']} not in the package")
            yield row, files[row["path"]]


def native_view(data: bytes, row: dict, side: int, quality: int) -> tuple[bytes, tuple[int, int], list[int]]:
    """(WebP bytes, (w, h), window in source pixels) of one corpus row's native view."""
    img = source_picture(data, row)
    window = centre_window(img.size, side)
    view = img.crop(window)
    buf = io.BytesIO()
    view.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue(), view.size, source_box(row.get("crop"), window)


def build_native_views(corpus: Path, out: Path, downloads: Path, side: int = SIDE, quality: int = WEBP_QUALITY,
                       max_mib: float = MAX_MIB, splits: tuple[str, ...] = SPLITS) -> dict:  # fmt: skip
    """Write the native views of the corpus's downscaled pictures of `splits` to `out`; returns the summary.

    Val/test views (the default) measure false positives only; train views (`splits=("train",)`, a folder
    of their own) are backgrounds and mining ground for training (`prepare.native_share`, `wm mine`).
    Splits are never mixed in one folder: a folder holds either training views or measuring views.
    """
    training = set(splits) == set(TRAIN_SPLITS)
    if not (training or set(splits) <= set(SPLITS)):
        raise WmError(f"native views: splits {', '.join(splits)}: expected train alone, or val and/or test")
    rows = wanted_rows(corpus_manifest(corpus), splits)
    work = open_work_folder(out)
    try:
        manifest = []
        for row, file_data in package_files(rows, downloads):
            data, (w, h), box = native_view(file_data, row, side, quality)
            rel = f"{row['split']}/{Path(row['file']).stem}.webp"
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)
            manifest.append({"file": rel, "view_of": row["file"], **{k: row.get(k) for k in PROVENANCE},
                             "crop": box, "width": w, "height": h, "source_width": row["source_width"],
                             "source_height": row["source_height"], "bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
        write_jsonl(work / MANIFEST, manifest)
        (work / "README.md").write_text(readme(manifest, side, quality, training), encoding="utf-8")
        mib = folder_bytes(work) / 2**20
        if mib > max_mib:
            raise WmError(f"native views: {mib:.1f} MiB > {max_mib} MiB: lower --side or --quality")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # an unfinished build never lingers beside the views
        raise
    swap_into_place(work, out)
    summary = {"views": len(manifest), "mib": round(mib, 2),
               "by_split": dict(Counter(r["split"] for r in manifest)),
               "by_category": dict(sorted(Counter(r["category"] for r in manifest).items()))}  # fmt: skip
    log.info("native views: %s", summary)
    return summary


def readme(rows: list[dict], side: int, quality: int, training: bool = False) -> str:
    splits = Counter(r["split"] for r in rows)
    packages = Counter((r["split"], r["package"], r["license"]) for r in rows)
    use = ("Training uses them: photo backgrounds drawn at native detail (`prepare.native_share`) and "
           "`wm mine`'s search for false positives through native refinement; they are views of train "
           "pictures only.") if training else (
           "Only false positives are measured on them (`wm evaluate`'s real_val / real_test); nothing trains on them.")  # fmt: skip
    lines = [
        f"# Native views of the corpus's real {'train' if training else 'clean val/test'} pictures",
        "",
        f"Built by `python -m wmcore.data.native_views` (DVC stage `corpus_native{'_train' if training else ''}`): "
        f"{len(rows)} views ({', '.join(f'{n} {s}' for s, n in sorted(splits.items()))}), each a centred window "
        f"of at most {side} x {side} px at the resolution its package ships, WebP quality {quality}. {use}",
        "Each row of manifest.jsonl names the corpus picture it is a view of (`view_of`), the package, its "
        "pinned version, URL and sha256, the path inside, the window in source pixels (`crop`) and the "
        "license; the license texts are the corpus's (`data/corpus/licenses`).",
        "",
        "| split | package | license | views |",
        "|---|---|---|---|",
        *(f"| {s} | {p} | {lic} | {n} |" for (s, p, lic), n in sorted(packages.items())),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmcore.data.native_views", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--out", type=Path, default=Path("data/corpus-native"))
    ap.add_argument("--downloads", type=Path, default=Path(".cache/wmdetect/registry"))
    ap.add_argument("--side", type=int, default=SIDE, help="longest side of a view, px")
    ap.add_argument("--quality", type=int, default=WEBP_QUALITY, help="WebP quality")
    ap.add_argument("--max-mib", type=float, default=MAX_MIB, help="size cap of the built folder")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS + TRAIN_SPLITS,
                    help="corpus splits to view: val and/or test (measuring), or train alone (training)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        summary = build_native_views(args.corpus, args.out, args.downloads, args.side, args.quality, args.max_mib,
                                     tuple(args.splits))  # fmt: skip
    except WmError as exc:
        print(f"native views: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
