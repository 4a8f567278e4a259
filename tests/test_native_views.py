"""Native views of the corpus's val/test pictures, and the real-photo figures and calibration that use them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import evaluate_params
from tests.test_calibration import BINS, scores_of
from tests.test_corpus import make_deb
from wmcore.data.native_views import build_native_views, centre_window, readme
from wmcore.errors import WmError
from wmcore.evaluate.calibrate import calibrate_rule_and_thresholds
from wmcore.evaluate.report import flat_metrics, real_clean_metrics, summary_table
from wmcore.evaluate.score import NATIVE_TAG, real_clean_samples
from wmcore.infer.working_scale import FUSION_RULES

URL = "https://deb.example/pool/pics_1.0_all.deb"


def picture(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth picture with a few bars, so that a window cut in the wrong place reads differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x // 97 % 2) * 200], -1) + rng.integers(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def corpus_with_package(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A corpus manifest over a fake package: a large val picture, a test picture with a view box,
    a train picture and a val picture stored at its own size; the package sits in the download cache."""
    pictures = {"big.png": picture(1500, 1000, 1), "boxed.png": picture(1400, 1100, 2),
                "train.png": picture(1600, 900, 3), "small.png": picture(600, 400, 4)}  # fmt: skip
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    sha = make_deb(downloads / Path(URL).name, {f"usr/share/pics/{n}": png(a) for n, a in pictures.items()})
    base = {"package": "pics", "package_version": "1.0", "package_url": URL, "package_sha256": sha,
            "package_kind": "deb", "license": "CC0-1.0", "license_basis": "test", "copyright": "nobody",
            "has_text": False, "page": False}  # fmt: skip
    rows = [
        {**base, "file": "val/pics--big.webp", "path": "usr/share/pics/big.png", "split": "val", "category": "water",
         "crop": None, "width": 768, "height": 512, "source_width": 1500, "source_height": 1000},
        {**base, "file": "test/pics--boxed.webp", "path": "usr/share/pics/boxed.png", "split": "test",
         "category": "street", "crop": [100, 50, 1400, 950], "width": 768, "height": 532, "source_width": 1300,
         "source_height": 900},
        {**base, "file": "train/pics--train.webp", "path": "usr/share/pics/train.png", "split": "train",
         "category": "nature", "crop": None, "width": 768, "height": 432, "source_width": 1600, "source_height": 900},
        {**base, "file": "val/pics--small.webp", "path": "usr/share/pics/small.png", "split": "val",
         "category": "food", "crop": None, "width": 600, "height": 400, "source_width": 600, "source_height": 400},
    ]  # fmt: skip
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:  # stored copies, as the corpus would hold them
        (corpus / r["file"]).parent.mkdir(exist_ok=True)
        Image.fromarray(picture(r["width"], r["height"], 9)).save(corpus / r["file"], format="WEBP")
    return corpus, downloads, pictures


def test_centre_window_is_at_most_side_and_centred():
    assert centre_window((1500, 1000), 1024) == (238, 0, 1262, 1000)
    assert centre_window((800, 600), 1024) == (0, 0, 800, 600)
    assert centre_window((3000, 3000), 512) == (1244, 1244, 1756, 1756)


def test_native_views_cut_the_source_pixels_of_downscaled_val_and_test_pictures_only(corpus_with_package, tmp_path):
    corpus, downloads, pictures = corpus_with_package
    out = tmp_path / "corpus-native"
    summary = build_native_views(corpus, out, downloads, side=1024, quality=95)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    # train never gets a view (it trains), nor a picture stored at its own size (no larger view exists)
    assert {r["view_of"] for r in rows} == {"val/pics--big.webp", "test/pics--boxed.webp"}
    assert summary["views"] == 2 and summary["by_split"] == {"val": 1, "test": 1}
    expected = {  # (source picture, window in its pixels)
        "val/pics--big.webp": (pictures["big.png"], [238, 0, 1262, 1000]),
        "test/pics--boxed.webp": (pictures["boxed.png"], [100 + 138, 50, 100 + 138 + 1024, 950]),
    }
    for r in rows:
        source, box = expected[r["view_of"]]
        assert r["crop"] == box and (r["width"], r["height"]) == (box[2] - box[0], box[3] - box[1])
        stored = (out / r["file"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(stored).hexdigest() and r["bytes"] == len(stored)
        assert r["split"] == r["view_of"].split("/")[0] and r["file"].startswith(r["split"] + "/")
        assert r["license"] == "CC0-1.0" and r["package_sha256"] and r["path"].startswith("usr/share/pics/")
        view = np.asarray(Image.open(out / r["file"]).convert("RGB"), np.float32)
        right = source[box[1] : box[3], box[0] : box[2]].astype(np.float32)
        shifted = source[box[1] : box[3], box[0] + 40 : box[2] + 40].astype(np.float32)
        assert np.abs(view - right).mean() < 8.0 and np.abs(view - shifted).mean() > 30.0  # native pixels, not a resize
    assert "| val | pics | CC0-1.0 | 1 |" in (out / "README.md").read_text()


def test_a_changed_package_file_or_a_build_over_the_cap_fails_and_keeps_the_old_views(corpus_with_package, tmp_path):
    corpus, downloads, _ = corpus_with_package
    out = tmp_path / "corpus-native"
    build_native_views(corpus, out, downloads)
    before = (out / "manifest.jsonl").read_text()
    with pytest.raises(WmError, match="MiB"):
        build_native_views(corpus, out, downloads, max_mib=0.01)
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]
    rows[0]["source_width"] = 1400  # the manifest no longer matches what the package ships
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(WmError, match="big.png: 1500x1000 px, the corpus manifest recorded 1400x1000"):
        build_native_views(corpus, out, downloads)
    assert (out / "manifest.jsonl").read_text() == before
    assert not list(tmp_path.glob(".corpus-native.partial-*"))


def test_real_clean_samples_add_the_views_of_the_splits_own_pictures(corpus_with_package, tmp_path):
    corpus, downloads, _ = corpus_with_package
    native = tmp_path / "corpus-native"
    build_native_views(corpus, native, downloads)
    val = real_clean_samples(corpus, "real_val", native)
    assert [s.id for s in val] == ["real_val:val/pics--big.webp", "real_val:val/pics--small.webp",
                                   "real_val:native/val/pics--big.webp"]  # fmt: skip
    assert [s.tags for s in val] == [(), (), (NATIVE_TAG,)] and all(s.image.is_file() for s in val)
    assert val[2].background_kind == "water" and val[2].has_watermark is False
    assert [s.id for s in real_clean_samples(corpus, "real_test", native)][-1] == "real_test:native/test/pics--boxed.webp"
    assert len(real_clean_samples(corpus, "real_val")) == 2  # no native folder: the stored copies alone
    other = tmp_path / "other-corpus"  # views of another corpus's pictures are not this corpus's photos
    other.mkdir()
    (other / "manifest.jsonl").write_text(json.dumps({"file": "val/x.webp", "split": "val", "category": "food"}) + "\n")
    assert [s.id for s in real_clean_samples(other, "real_val", native)] == ["real_val:val/x.webp"]


def test_real_clean_metrics_report_stored_copies_and_native_views_apart():
    clean = np.zeros((10, 10), bool)
    hot = np.zeros((10, 10), np.float32)
    hot[:5] = 0.9  # half of it marked
    split = scores_of([np.zeros((10, 10), np.float32), hot, np.zeros((10, 10), np.float32)], [clean] * 3)
    split.samples[1:] = [dataclasses.replace(s, tags=(NATIVE_TAG,)) for s in split.samples[1:]]
    m = real_clean_metrics(split, 0.5, 0.0, BINS, gate=True)
    assert m["n_flagged"] == 1 and m["fp_area"] == pytest.approx(50 / 300, abs=1e-6)
    assert m["by_view"] == {"stored": {"n_images": 1, "fp_area": 0.0, "n_flagged": 0},
                            "native": {"n_images": 2, "fp_area": 0.25, "n_flagged": 1}}  # fmt: skip
    flat = flat_metrics({"real_val": m})
    assert flat["real_val/native_fp_area"] == 0.25 and flat["real_val/stored_n_flagged"] == 0.0
    plain = scores_of([hot], [clean])
    assert "by_view" not in real_clean_metrics(plain, 0.5, 0.0, BINS, gate=True)


def rule_scores(refine_marks_real: bool, large_real: bool):
    """Val and real val scores per rule, the val images 60 px (larger than the tests' 40 px working side):
    refine finds the marks better than global (val F1 1.0 against 0.95); on the real photos refine marks
    a photo where global marks nothing, if asked; that photo is 60 px if `large_real`, else 30 px."""
    truths, val = [], {}
    for i in range(4):
        t = np.zeros((60, 60), bool)
        t[10:20, 5 + i : 25 + i] = True
        truths.append(t)
    for rule in FUSION_RULES:
        maps = [np.where(t, 0.9, 0.02).astype(np.float32) for t in truths]
        if rule == "global":  # the working view misses the ends of one mark's strokes
            maps[0][10:20, 5:13] = 0.02
        val[rule] = scores_of(maps, truths)
    size = 60 if large_real else 30
    real = {}
    for rule in FUSION_RULES:
        photos = [np.full((30, 30), 0.01, np.float32), np.full((size, size), 0.01, np.float32)]
        if refine_marks_real and rule == "refine":
            photos[1][:20, :20] = 0.95  # native refinement of a bridge's truss
        real[rule] = scores_of(photos, [np.zeros(p.shape, bool) for p in photos])
    return val, real


@pytest.mark.parametrize(
    ("refine_marks_real", "large_real", "fusion", "expected"),
    [
        (False, True, "auto", "refine"),  # refine wins on val F1 and marks no more real photo
        (True, True, "auto", "global"),  # refine's val gain costs a marked real photo: over the budget
        (True, False, "auto", "refine"),  # no real photo larger than the working side: val F1 alone decides
        (True, True, "refine", "refine"),  # a fixed predict.fusion is applied as it is
    ],
)
def test_fusion_rule_is_chosen_with_the_real_photos_budgets_in_view(tmp_path, refine_marks_real, large_real,
                                                                    fusion, expected):  # fmt: skip
    val, real = rule_scores(refine_marks_real, large_real)
    params = evaluate_params(tmp_path, tmp_path, fusion_rules=["global", "refine"], max_real_fp_area=0.01,
                             max_real_flagged=0.4, fusion_min_gain=0.005)  # fmt: skip
    params.predict.global_side = 40
    params.predict.fusion = fusion
    choice, applied, calibration = calibrate_rule_and_thresholds(val, real, params)
    assert applied == expected
    if fusion == "auto" and large_real:
        assert set(choice.calibrated) == {"global", "refine"} and choice.rule == expected
        assert choice.calibrated[expected]["within_budget"] and calibration.within_budget
        assert calibration.real_fp_area == 0.0  # the chosen rule marks no real photo at its thresholds
        assert "real clean val photos" in choice.reason and "calibrated" in choice.as_metrics()
    else:
        assert choice.calibrated == {}
    if expected == "global" and fusion == "auto":  # refine stays in budget only by gating every val mark
        assert choice.calibrated["refine"]["val_f1"] < 0.5 < choice.calibrated["global"]["val_f1"]
        assert calibration.val_f1 == pytest.approx(choice.calibrated["global"]["val_f1"])


def test_no_rule_within_the_budgets_takes_the_least_real_marking(tmp_path):
    val, real = rule_scores(True, True)
    params = evaluate_params(tmp_path, tmp_path, fusion_rules=["global", "refine"])
    params.predict.global_side = 40
    # no pair can mark less than nothing (budgets below what validation allows: copied unvalidated)
    params.evaluate = params.evaluate.model_copy(update={"max_real_fp_area": -1.0, "max_real_flagged": -1.0})
    choice, applied, calibration = calibrate_rule_and_thresholds(val, real, params)
    assert not calibration.within_budget and "least real" in choice.reason
    areas = {r: c["real_fp_area"] for r, c in choice.calibrated.items()}
    assert areas[applied] == min(areas.values())


def test_summary_table_names_the_native_views_figures():
    m = {"val": {"f1": 0.5}, "test": {"f1": 0.5},
         "real_val": {"fp_area": 0.001, "n_flagged": 2, "n_images": 10,
                      "by_view": {"stored": {"n_images": 8, "fp_area": 0.0, "n_flagged": 1},
                                  "native": {"n_images": 2, "fp_area": 0.004, "n_flagged": 1}}}}  # fmt: skip
    assert "(native views: fp_area 0.004, marked 1 of 2)" in summary_table(m)


def test_readme_lists_every_package_and_license():
    rows = [{"split": "val", "package": "a", "license": "MIT"}, {"split": "test", "package": "b", "license": "CC0"}]
    text = readme(rows, 1024, 80)
    assert "| test | b | CC0 | 1 |" in text and "| val | a | MIT | 1 |" in text and "1024 x 1024" in text


@pytest.mark.parametrize(("folder", "splits", "mib"), [("corpus-native", {"val", "test"}, 10),
                                                      ("corpus-native-train", {"train"}, 16)])  # fmt: skip
def test_the_committed_native_views_match_their_manifest_and_the_corpus(folder, splits, mib):
    root = Path(__file__).resolve().parents[1]
    native, corpus = root / "data" / folder, root / "data" / "corpus"
    rows = [json.loads(line) for line in (native / "manifest.jsonl").read_text().splitlines()]
    stored = {json.loads(line)["file"]: json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()}
    assert len(rows) >= 50 and {r["split"] for r in rows} == splits
    for r in rows:
        parent = stored[r["view_of"]]
        assert r["split"] == parent["split"] and r["package_sha256"] == parent["package_sha256"]
        assert r["license"] and r["license"] == parent["license"]
        # at the package's resolution: finer than the stored copy, which is the whole picture downscaled
        assert r["source_width"] == parent["source_width"] > parent["width"] and r["width"] <= r["source_width"]
        assert hashlib.sha256((native / r["file"]).read_bytes()).hexdigest() == r["sha256"]
    assert sum(r["bytes"] for r in rows) < mib * 2**20
