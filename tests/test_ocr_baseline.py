"""bench/ocr_baseline.py: the OCR detector's boxes and probability map line up with the text it finds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("rapidocr_onnxruntime")  # a dev dependency (pyproject); the bench needs it too

from bench.ocr_baseline import OcrDetector  # noqa: E402


def test_the_boxes_and_the_map_cover_drawn_text_and_leave_a_blank_page_clean():
    page = Image.new("RGB", (480, 320), "white")
    ImageDraw.Draw(page).text((40, 130), "SAMPLE 2026", fill="black", font=ImageFont.load_default(size=48))
    text = np.asarray(page).min(axis=2) < 128  # the drawn glyph pixels
    rows, cols = np.nonzero(text)
    blank = np.full((240, 360, 3), 255, np.uint8)
    drawn, empty = OcrDetector().maps([np.asarray(page), blank])
    assert drawn["boxes"].shape == drawn["map"].shape == text.shape and empty["map"].shape == (240, 360)
    boxes = drawn["boxes"] > 0.5
    assert boxes[text].mean() > 0.95  # the glyphs lie inside the found boxes
    assert not boxes[: rows.min() - 20].any() and not boxes[rows.max() + 20 :].any()  # nothing far above or below
    assert not boxes[:, : cols.min() - 20].any() and not boxes[:, cols.max() + 20 :].any()
    # DB's map is the shrunk text kernel the boxes are grown from: high on the line's middle, inside the boxes
    middle = text.copy()
    middle[: (rows.min() + rows.max()) // 2 - 4] = middle[(rows.min() + rows.max()) // 2 + 4 :] = False
    assert drawn["map"][middle].mean() > 0.8 and drawn["map"][~boxes].max() < 0.3
    assert drawn["map"].min() >= 0.0 and drawn["map"].max() <= 1.0
    assert not empty["boxes"].any() and empty["map"].max() < 0.3
