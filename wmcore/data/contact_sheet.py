"""Contact sheet of a prepared dataset: 16 samples, each image beside its mask, styles written below.

Samples are picked to show variety: a clean image and a scene-text image first, then one per
primary style not yet shown, then watermarked ones on backgrounds not yet shown, then the rest in
manifest order. The choice depends only on the manifest,
so the sheet is as deterministic as the dataset.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from wmcore.data.fonts import faces_for, load_font
from wmcore.runtime.atomic import save_image

N_SAMPLES = 16
COLUMNS = 4
THUMB = 192  # px, long side of each image and mask thumbnail
CAPTION = 28  # px of caption under each pair


def pick_varied(rows: list[dict], n: int = N_SAMPLES) -> list[dict]:
    """Up to `n` rows: a clean one, a scene-text one, one per new primary style, new backgrounds, then the rest."""
    chosen: list[dict] = []
    seen: set[str] = set()

    def take(row: dict) -> None:
        if len(chosen) < n and row not in chosen:
            chosen.append(row)
            seen.add(row["styles"][0])

    for want in (lambda r: not r["has_watermark"], lambda r: r["scene_text"] and r["has_watermark"]):
        hit = next((r for r in rows if want(r)), None)
        if hit is not None:
            take(hit)
    for row in rows:
        if row["styles"][0] not in seen:
            take(row)
    sources = {r["source"] for r in chosen}
    for row in rows:  # then watermarked samples on backgrounds not shown yet
        if row["has_watermark"] and row["source"] not in sources:
            take(row)
            sources.add(row["source"])
    for row in rows:
        take(row)
    return chosen


def _caption(row: dict) -> str:
    tags = [t for t in row["styles"] if t not in ("latin", "cjk")]
    return f"{row['id']} {row['source']}\n{' '.join(tags)}"[:120]


def write_contact_sheet(root: Path, rows: list[dict], out: Path, png_compress_level: int = 1) -> list[str]:
    """Write the sheet of `pick_varied(rows)` (paths relative to `root`) to `out`; returns the ids shown."""
    chosen = pick_varied(rows)
    cell_w, cell_h = 2 * THUMB + 6, THUMB + CAPTION
    rows_n = max(1, -(-len(chosen) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * (cell_w + 8), rows_n * (cell_h + 8)), (40, 40, 44))
    draw = ImageDraw.Draw(sheet)
    faces = faces_for("latin")
    font = load_font(faces[0], 10) if faces else None
    for k, row in enumerate(chosen):
        x, y = (k % COLUMNS) * (cell_w + 8) + 4, (k // COLUMNS) * (cell_h + 8) + 4
        with Image.open(root / row["image"]) as im, Image.open(root / row["mask"]) as mk:
            image, mask = im.convert("RGB"), mk.convert("RGB")
        image.thumbnail((THUMB, THUMB))
        mask.thumbnail((THUMB, THUMB))
        sheet.paste(image, (x, y))
        sheet.paste(mask, (x + THUMB + 6, y))
        draw.multiline_text((x, y + THUMB + 2), _caption(row), fill=(230, 230, 230), font=font, spacing=2)
    save_image(out, sheet, compress_level=png_compress_level)
    return [r["id"] for r in chosen]
