"""The style-held-out split: held-out names never reach train/val/test, test_heldout draws only them,
the choice is deterministic and never starves training, and evaluation reports the split and the
false-positive area on clean pages and clean photos separately."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import evaluate_params, make_tiny_prepared, write_random_checkpoint
from wmcore.config import Params, PrepareParams, validate
from wmcore.data.backgrounds import PAGE_BACKGROUNDS, BackgroundCatalog, discover_backgrounds
from wmcore.data.fonts import available_faces, face_scope, faces_for, load_font
from wmcore.data.generator import ALWAYS_NEEDED_SCRIPTS, hold_out, plan_heldout
from wmcore.data.kept_out import REGISTRIES
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.data.phrases import NO_HOLDOUT, PHRASE_KINDS, PhrasePolicy, make_block, make_phrase
from wmcore.data.prepare import run_prepare
from wmcore.data.render import STYLES
from wmcore.errors import WmError
from wmcore.evaluate import run as evaluate_run
from wmcore.evaluate import score as evaluate_score
from wmcore.evaluate.run import run_evaluation
from wmcore.infer.working_scale import FUSION_RULES
from wmcore.model.checkpoint import load_checkpoint, save_checkpoint

FACES = {f.name: f for f in available_faces()}


def prepare_params(root: Path, **prepare) -> Params:
    """A fast run with a held-out split: 24/4/4 + 8 held-out samples of 64..96 px."""
    group = {
        "n_train": 24,
        "n_val": 4,
        "n_test": 4,
        "n_test_heldout": 8,
        "min_side": 64,
        "max_side": 96,
        "heldout_style_share": 0.2,
        "background_sources": ["skimage", "procedural"],
        **prepare,
    }
    return validate({"base": {"threads": 1}, "paths": {"prepared": str(root / "prepared")}, "prepare": group})


def read_manifest(prepared: Path) -> list[dict]:
    return [json.loads(line) for line in (prepared / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(prepared folder, stats) of one run with a held-out split, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("heldout")
    stats = run_prepare(prepare_params(root))
    return root / "prepared", stats


@pytest.fixture(scope="module")
def catalog() -> BackgroundCatalog:
    return discover_backgrounds(PrepareParams(background_sources=["skimage", "procedural"]))


def mark_styles(row: dict) -> set[str]:
    """Style names of a row's marks: its first tag, and the tag after "multi" (other tags, e.g. a stamp's
    "hollow", may share a style's name)."""
    tags = row["styles"]
    names = {tags[0]} & set(STYLES)
    return names | ({tags[tags.index("multi") + 1]} if "multi" in tags else set())


def _background_held(row: dict, held: dict) -> bool:
    source = row["source"]
    return source in held["photos"] or (
        source.startswith("procedural:") and source.split(":", 1)[1] in held["procedural"]
    )


def assert_none_drawn(rows: list[dict], held: dict) -> None:
    """No row draws a held-out font, phrase kind, style or background; the rows do record what they draw."""
    for row in rows:
        assert not set(row["fonts"]) & set(held["fonts"]), row
        assert not set(row["phrase_kinds"]) & set(held["phrase_kinds"]), row
        assert not mark_styles(row) & set(held["styles"]), row
        assert not _background_held(row, held), row
    # the check has teeth: the rows do record fonts, phrase kinds and styles
    assert any(r["fonts"] for r in rows) and any(r["phrase_kinds"] for r in rows)


# --------------------------------------------------------------------------- prepare


def test_heldout_names_never_reach_train_val_or_test(prepared):
    root, stats = prepared
    held = stats["heldout"]
    assert held["fonts"] and held["phrase_kinds"] and held["styles"] and held["photos"] and held["procedural"]
    seen_rows = [r for r in read_manifest(root) if r["split"] != HELDOUT_SPLIT]
    assert len(seen_rows) == 32
    assert_none_drawn(seen_rows, held)


def test_heldout_split_has_the_requested_size_and_draws_only_heldout_names(prepared):
    root, stats = prepared
    held = stats["heldout"]
    rows = [r for r in read_manifest(root) if r["split"] == HELDOUT_SPLIT]
    assert stats["counts"][HELDOUT_SPLIT] == held["samples"] == len(rows) == 8
    assert [r["id"] for r in rows] == [f"{HELDOUT_SPLIT}_{i:05d}" for i in range(8)]
    held_scripts = {s for name in held["fonts"] for s in FACES[name].scripts}
    for row in rows:
        for kind in ("images", "masks", "alpha"):
            assert (root / HELDOUT_SPLIT / kind / f"{row['id']}.png").is_file()
        assert _background_held(row, held), row
        assert mark_styles(row) <= set(held["styles"]), row
        assert set(row["phrase_kinds"]) & set(PHRASE_KINDS) <= set(held["phrase_kinds"]), row
        for name in row["fonts"]:  # a seen face only for a script no held-out face can draw
            assert name in held["fonts"] or FACES[name].scripts - {"latin"} - held_scripts, (name, row)
    assert any(r["has_watermark"] for r in rows)


def test_manifest_records_the_background_kind(prepared):
    root, stats = prepared
    for row in read_manifest(root):
        expected = "page" if row["source"] in PAGE_BACKGROUNDS else row["source"].split(":")[0]
        assert row["background_kind"] == {"skimage": "photo"}.get(expected, expected), row
    assert sum(stats["background_kinds"][HELDOUT_SPLIT].values()) == 8


def test_same_params_give_the_same_plan_and_bytes_in_a_pool(prepared, tmp_path):
    root, stats = prepared
    again = run_prepare(prepare_params(tmp_path, workers=2))
    assert again["heldout"] == stats["heldout"]
    for name in ("manifest.jsonl", *(r["image"] for r in read_manifest(root) if r["split"] == HELDOUT_SPLIT)):
        assert (tmp_path / "prepared" / name).read_bytes() == (root / name).read_bytes(), name


def test_a_fine_tune_on_another_seed_keeps_out_what_the_evaluation_set_holds_out(prepared, catalog, tmp_path):
    """prepare.heldout_from: a dataset drawn on another seed (and style weights) keeps the named dataset's plan,
    where its own seed would train on some of the names that dataset's test_heldout holds out."""
    root, stats = prepared
    held = stats["heldout"]
    params = prepare_params(tmp_path / "pinned", n_train=32, n_test_heldout=0, heldout_from=str(root))
    own = plan_heldout(prepare_params(tmp_path).prepare, 7, catalog)  # what seed 7 alone would keep out
    assert own.fonts != tuple(held["fonts"]) and own.photos != tuple(held["photos"])
    pinned = run_prepare(params.model_copy(update={"base": Params().base.model_copy(update={"seed": 7})}))
    for name in ("fonts", "phrase_kinds", "styles", "photos", "procedural"):
        assert pinned["heldout"][name] == held[name]
    rows = read_manifest(tmp_path / "pinned" / "prepared")
    assert len(rows) == 40 and HELDOUT_SPLIT not in {r["split"] for r in rows}
    assert_none_drawn(rows, held)


@pytest.mark.parametrize("content", [None, "{not json", '{"counts": {}}', '{"heldout": {"share": 0.2}}'])
def test_heldout_from_without_a_plan_fails_naming_the_key(tmp_path, content):
    source = tmp_path / "source"
    source.mkdir()
    if content is not None:
        (source / "stats.json").write_text(content)
    with pytest.raises(WmError, match=r"^prepare\.heldout_from: .*stats\.json"):
        run_prepare(prepare_params(tmp_path, heldout_from=str(source)))
    assert not (tmp_path / "prepared").exists()


def test_an_interrupted_run_resumes_the_heldout_split_too(tmp_path, monkeypatch):
    params = prepare_params(tmp_path, n_train=3, n_val=1, n_test=1, n_test_heldout=3)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("wmcore.data.prepare.write_contact_sheet", crash)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(params)
    monkeypatch.undo()
    stats = run_prepare(params)
    assert stats["resumed"] == 8 and stats["counts"][HELDOUT_SPLIT] == 3
    fresh = run_prepare(prepare_params(tmp_path / "fresh", n_train=3, n_val=1, n_test=1, n_test_heldout=3))
    assert fresh["resumed"] == 0
    assert read_manifest(tmp_path / "prepared") == read_manifest(tmp_path / "fresh" / "prepared")


@pytest.mark.parametrize(("share", "n_heldout"), [(0.0, 4), (0.3, 0)])
def test_no_heldout_split_without_share_or_size(tmp_path, share, n_heldout):
    params = prepare_params(tmp_path, n_train=2, n_val=1, n_test=1, heldout_style_share=share, n_test_heldout=n_heldout)
    stats = run_prepare(params)
    assert stats["counts"] == {"train": 2, "val": 1, "test": 1, "total": 4}
    assert stats["heldout"]["fonts"] == stats["heldout"]["styles"] == [] and stats["heldout"]["samples"] == 0
    assert not (tmp_path / "prepared" / HELDOUT_SPLIT).exists()


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    ("n", "share", "expected"), [(10, 0.2, 2), (10, 0.01, 1), (10, 1.0, 9), (7, 0.2, 1), (1, 0.5, 0)]
)
def test_hold_out_takes_a_share_but_always_leaves_one(n, share, expected):
    names = [f"n{i}" for i in range(n)]
    held = hold_out(np.random.default_rng(0), names, share)
    assert len(held) == expected and set(held) <= set(names) and list(held) == sorted(held)


@pytest.mark.parametrize("share", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(6))
def test_plan_never_leaves_training_without_a_needed_kind(catalog, seed, share):
    plan = plan_heldout(PrepareParams(heldout_style_share=share), seed, catalog)
    assert plan.active() and plan == plan_heldout(PrepareParams(heldout_style_share=share), seed, catalog)
    seen_kinds = [k for k in PHRASE_KINDS if k not in plan.phrase_kinds]
    needed = ALWAYS_NEEDED_SCRIPTS | {PHRASE_KINDS[k][0] for k in seen_kinds}
    seen_faces = [f for f in available_faces() if f.name not in plan.fonts]
    assert seen_kinds and all(any(s in f.scripts for f in seen_faces) for s in needed), plan
    assert set(STYLES) - set(plan.styles) and set(catalog.procedural) - set(plan.procedural)
    assert {r.id for r in catalog.photos} - set(plan.photos)
    seen_pages = {r.id for r in catalog.photos if r.id in PAGE_BACKGROUNDS} - set(plan.photos)
    seen_pages |= {f"procedural:{k}" for k in catalog.procedural if k not in plan.procedural} & PAGE_BACKGROUNDS
    assert seen_pages, plan  # training keeps a document page as a hard negative


def test_a_cjk_face_is_held_out_only_when_training_keeps_a_face_for_its_script(catalog):
    plans = [plan_heldout(PrepareParams(heldout_style_share=0.5), seed, catalog) for seed in range(30)]
    held_cjk = [(p, name) for p in plans for name in p.fonts if FACES[name].scripts - {"latin"}]
    assert held_cjk  # some seed does hold one out
    for plan, name in held_cjk:
        seen = [f for f in FACES.values() if f.name not in plan.fonts]
        for script in FACES[name].scripts - {"latin"}:
            trained = script in ALWAYS_NEEDED_SCRIPTS or any(
                s == script and k not in plan.phrase_kinds for k, (s, _) in PHRASE_KINDS.items()
            )
            assert not trained or any(script in f.scripts for f in seen), (name, script, plan)


def test_plans_differ_between_seeds(catalog):
    plans = {plan_heldout(PrepareParams(), seed, catalog) for seed in range(5)}
    assert len(plans) > 1


# --------------------------------------------------------------------------- font scope and phrase policy


@pytest.mark.parametrize(
    ("prefer", "script", "expected"),
    [
        (
            False,
            "latin",
            [n for n, f in FACES.items() if "latin" in f.scripts and n not in ("dejavu-sans", "noto-cjk-kr")],
        ),
        (True, "latin", ["dejavu-sans", "noto-cjk-kr"]),
        (True, "kr", ["noto-cjk-kr"]),
        (True, "sc", [n for n, f in FACES.items() if "sc" in f.scripts]),  # no held-out face draws sc: the seen ones do
        (False, "kr", [n for n, f in FACES.items() if "kr" in f.scripts and n != "noto-cjk-kr"]),  # the font pack's
    ],
)
def test_face_scope_filters_faces(prefer, script, expected):
    with face_scope(frozenset({"dejavu-sans", "noto-cjk-kr"}), prefer) as used:
        assert [f.name for f in faces_for(script)] == expected
        load_font(FACES["dejavu-serif"], 12)
    assert used == {"dejavu-serif"}
    assert len(faces_for("latin")) == len(FACES)  # outside the scope nothing is filtered


@pytest.mark.parametrize("kind", ["url", "brand", None])
def test_phrase_policy_replaces_held_out_kinds(kind):
    seen, unseen = PhrasePolicy(frozenset({"url", "date"})), PhrasePolicy(frozenset({"url", "date"}), True)
    rng = np.random.default_rng(1)
    assert {make_phrase(rng, kind, seen).kind for _ in range(200)}.isdisjoint({"url", "date"})
    assert {make_phrase(rng, kind, unseen).kind for _ in range(200)} <= {"url", "date"}
    parts = {k for _ in range(50) for k in make_block(rng, 3, seen).part_kinds}
    assert parts and parts.isdisjoint({"url", "date"})


def test_an_empty_policy_draws_exactly_what_no_policy_draws():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [make_phrase(a) for _ in range(100)] == [make_phrase(b, None, NO_HOLDOUT) for _ in range(100)]


# --------------------------------------------------------------------------- evaluation


class RecordingLogger:
    """A RunLogger that keeps what is logged."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


def with_kinds_and_heldout(root: Path, kinds: dict[str, dict[str, str]]) -> Path:
    """A tiny prepared dataset (val 3, test 6) plus a test_heldout split of 6 other images; background_kind set
    per split and id from `kinds` (default "photo"). Samples 2 and 5 of each split are the clean ones."""
    prepared = make_tiny_prepared(root / "prepared", n_train=1, n_val=3, n_test=6, seed=0)
    other = make_tiny_prepared(root / "other", n_train=0, n_val=0, n_test=6, seed=1)
    rows = read_manifest(prepared)
    for row in read_manifest(other):
        new_id = row["id"].replace("test", HELDOUT_SPLIT)
        for kind in ("image", "mask", "alpha"):
            target = f"{HELDOUT_SPLIT}/{Path(row[kind]).parent.name}/{new_id}.png"
            (prepared / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(other / row[kind], prepared / target)
            row[kind] = target
        rows.append({**row, "split": HELDOUT_SPLIT, "id": new_id})
    for row in rows:
        row["background_kind"] = kinds.get(row["split"], {}).get(row["id"].rsplit("-", 1)[1], "photo")
    (prepared / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return prepared


def _page_blind_oracle(prepared: Path) -> evaluate_score.ProbabilityFn:
    """A 'model' that knows every truth mask but fires everywhere on text pages."""
    answers = {}
    for row in read_manifest(prepared):
        image = np.asarray(Image.open(prepared / row["image"]).convert("RGB"))
        truth = np.asarray(Image.open(prepared / row["mask"])) > 127
        probs = np.full(truth.shape, 0.95) if row["background_kind"] == "page" else np.where(truth, 0.95, 0.05)
        answers[hashlib.sha1(image.tobytes()).hexdigest()] = probs.astype(np.float32)
    return lambda images: [answers[hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest()] for im in images]


def test_evaluation_reports_heldout_and_separate_fp_areas(tmp_path, monkeypatch):
    # test: clean 0002 on a page (all fired), clean 0005 a photo; test_heldout: clean 0002 photo, 0005 procedural
    kinds = {"test": {"0002": "page"}, HELDOUT_SPLIT: {"0005": "procedural"}}
    prepared = with_kinds_and_heldout(tmp_path, kinds)
    write_random_checkpoint(tmp_path / "train" / "best.pt", epoch=1)
    oracle = _page_blind_oracle(prepared)
    monkeypatch.setattr(evaluate_run, "build_probability_fn", lambda *args: oracle)
    every_rule = lambda images: [dict.fromkeys(FUSION_RULES, p) for p in oracle(images)]  # noqa: E731
    monkeypatch.setattr(evaluate_run, "build_rule_maps_fn", lambda *args: every_rule)
    logger = RecordingLogger()
    metrics = run_evaluation(evaluate_params(tmp_path, prepared, n_overlay=2), run_logger=logger)
    test, heldout = metrics["test"], metrics[HELDOUT_SPLIT]
    assert set(heldout) == set(test) | {"trained_on"} and heldout["n_images"] == 6 and heldout["n_clean"] == 2
    assert heldout["threshold"] == test["threshold"] == metrics["val"]["threshold"]  # chosen on val
    assert (test["clean_page_fp_area"], test["clean_photo_fp_area"], test["clean_fp_area"]) == (1.0, 0.0, 0.5)
    assert (test["n_clean_page"], test["n_clean_photo"], heldout["n_clean_page"], heldout["n_clean_photo"]) == (
        1,
        1,
        0,
        1,
    )
    assert (heldout["clean_page_fp_area"], heldout["clean_photo_fp_area"], heldout["clean_fp_area"]) == (None, 0.0, 0.0)
    assert heldout["f1"] == heldout["recall"] == 1.0 and test["recall"] == 1.0 and test["precision"] < 1.0
    assert logger.metrics["test_heldout/f1"] == 1.0 and logger.metrics["test/clean_page_fp_area"] == 1.0
    assert "test_heldout/clean_page_fp_area" not in logger.metrics  # undefined values are not logged
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())[HELDOUT_SPLIT] == heldout


def test_without_a_heldout_split_there_is_no_heldout_block(tmp_path, tiny_prepared):
    write_random_checkpoint(tmp_path / "train" / "best.pt", epoch=1)
    logger = RecordingLogger()
    metrics = run_evaluation(evaluate_params(tmp_path, tiny_prepared, n_overlay=2), run_logger=logger)
    assert set(metrics) == {"val", "test", "backend", "fusion", "calibration", "source", "enlarge_below"}
    assert not any(k.startswith(HELDOUT_SPLIT) for k in logger.metrics)
    # the fixture's manifest has no background_kind: only the all-clean area is defined
    assert metrics["test"]["clean_fp_area"] is not None and metrics["test"]["clean_page_fp_area"] is None


def test_prepare_then_evaluate_reports_the_heldout_split(prepared, tmp_path):
    root, stats = prepared
    write_random_checkpoint(tmp_path / "train" / "best.pt", epoch=1)
    metrics = run_evaluation(evaluate_params(tmp_path, root, n_overlay=2))
    assert metrics[HELDOUT_SPLIT]["n_images"] == stats["counts"][HELDOUT_SPLIT] == 8
    assert metrics[HELDOUT_SPLIT]["n_clean"] == stats["clean"][HELDOUT_SPLIT]


def _recording(path: Path, kept_out: dict | None) -> None:
    """The checkpoint at `path` with meta["kept_out"] = `kept_out` (what its training never drew)."""
    ckpt = load_checkpoint(path)
    ckpt["meta"]["kept_out"] = kept_out
    save_checkpoint(path, ckpt)


def test_evaluation_says_how_many_heldout_names_the_model_trained_on(prepared, tmp_path, caplog):
    """test_heldout's "trained_on": per registry, the split's held-out names the checkpoint's lineage drew;
    None (with a warning) when the checkpoint does not record it; the exported model keeps the record."""
    root, stats = prepared
    held = {r: stats["heldout"][r] for r in REGISTRIES}
    best = write_random_checkpoint(tmp_path / "train" / "best.pt", epoch=1)
    params = evaluate_params(tmp_path, root, n_overlay=0)
    with caplog.at_level(logging.WARNING):
        assert run_evaluation(params)[HELDOUT_SPLIT]["trained_on"] is None
    assert "does not record what its training kept out" in caplog.text
    _recording(best, held)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run_evaluation(params)[HELDOUT_SPLIT]["trained_on"] == dict.fromkeys(REGISTRIES, 0)
    assert HELDOUT_SPLIT not in caplog.text
    exported = load_checkpoint(tmp_path / "evaluate" / "model.pt")
    assert exported["meta"]["kept_out"] == held
    _recording(best, {**held, "fonts": held["fonts"][1:], "photos": []})  # trained on one font and every photo
    logger = RecordingLogger()
    with caplog.at_level(logging.WARNING):
        seen = run_evaluation(params, run_logger=logger)[HELDOUT_SPLIT]["trained_on"]
    assert logger.metrics[f"{HELDOUT_SPLIT}/trained_on/fonts"] == 1.0
    assert seen == {**dict.fromkeys(REGISTRIES, 0), "fonts": 1, "photos": len(held["photos"])} and seen["photos"] > 0
    assert "is not a held-out figure" in caplog.text

