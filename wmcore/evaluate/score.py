"""Scoring: one pass of a model over a split keeps, per image, what every metric needs.

Per image: a histogram of its probabilities split by truth (`threshold_histograms`,
`evaluate.threshold_grid` bins: exact pixel counts at every grid threshold in a few hundred bytes),
its has-watermark score, its size and (for the overlays) a small thumbnail. Probabilities come
from the inference engine's predictor, so evaluation measures exactly what `wm predict` runs.

Splits: the prepared dataset's val, test and test_heldout (synthetic, with masks), and the real
clean photos of the corpus (`real_val`, `real_test`: no watermark, every predicted pixel is a
false positive; see wmcore.data.backgrounds.corpus_rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wmcore.config import Params
from wmcore.data.backgrounds import corpus_rows
from wmcore.data.layout import HELDOUT_SPLIT
from wmcore.errors import WmError
from wmcore.evaluate.fusion import rule_maps
from wmcore.evaluate.samples import EvalSample, SampleError, load_split, read_sample
from wmcore.infer.predictor import get_predictor
from wmcore.infer.working_scale import FUSION_RULES
from wmcore.metrics import image_score, threshold_histograms

log = logging.getLogger(__name__)

REAL_SPLITS = {"real_val": "val", "real_test": "test"}  # evaluation split -> corpus split
NATIVE_TAG = "native"  # a real clean sample that is a native view (wmcore.data.native_views), not a stored copy

# list of (H, W, 3) uint8 RGB images -> list of (H, W) float32 watermark probabilities
ProbabilityFn = Callable[[list[np.ndarray]], list[np.ndarray]]
# list of (H, W, 3) uint8 RGB images -> per image {name: (H, W) float32 probabilities}
MapsFn = Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]]


# --------------------------------------------------------------------------- probabilities


def build_probability_fn(params: Params, checkpoint: Path, backend: str, fusion: str | None = None) -> ProbabilityFn:
    """The one place evaluation gets probabilities: the inference engine's predictor.

    Evaluation thereby measures exactly what `wm predict` runs: the same global view and tiling
    for large images (fused by `fusion`, a rule of FUSION_RULES; None = the predictor's own),
    batching and backend (torch, onnx, onnx-int8).
    """
    predictor = get_predictor(str(checkpoint), params, backend=backend)
    return lambda images: predictor.predict(images, fusion)


def build_rule_maps_fn(params: Params, checkpoint: Path, backend: str) -> MapsFn:
    """Per image, the probability map of every fusion rule, from the native, working and refinement passes."""
    predictor = get_predictor(str(checkpoint), params, backend=backend)
    return lambda images: [rule_maps(*passes) for passes in predictor.predict_paths(images)]


# --------------------------------------------------------------------------- one pass over a split


@dataclass
class SplitScores:
    """What one pass over a split keeps per scored image (N images); enough for every metric."""

    samples: list[EvalSample] = field(default_factory=list)
    hists: list[torch.Tensor] = field(default_factory=list)  # each (2, bins) int64: watermark / clean pixels
    scores: list[float] = field(default_factory=list)  # has-watermark image scores in [0, 1]
    has_watermark: list[bool] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)  # (h, w) uint8 probabilities x 255, if kept
    skipped: list[str] = field(default_factory=list)  # "<id>: reason"
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of each scored image, px

    def stacked_hists(self, bins: int) -> torch.Tensor:
        """(N, 2, bins) histograms ((0, 2, bins) for an empty split)."""
        return torch.stack(self.hists) if self.hists else torch.zeros(0, 2, bins, dtype=torch.long)

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(has_watermark, scene_text) boolean arrays (N,)."""
        return np.array(self.has_watermark, bool), np.array([s.scene_text for s in self.samples], bool)

    def background_is(self, kind: str) -> np.ndarray:
        """(N,) bool: the image's manifest background_kind is `kind` ("page", "photo", "procedural")."""
        return np.array([s.background_kind == kind for s in self.samples], bool)


def _readable_batches(samples: list[EvalSample], crop: int, batch_size: int, result: SplitScores) -> Iterator[list]:
    """Batches of (sample, image, truth); unreadable samples are logged and recorded as skipped."""
    batch: list[tuple[EvalSample, np.ndarray, np.ndarray]] = []
    for sample in samples:
        try:
            batch.append((sample, *read_sample(sample, crop)))
        except SampleError as exc:
            log.warning("skipped %s", exc)
            result.skipped.append(str(exc))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def thumbnail(probs: np.ndarray, side: int) -> np.ndarray:
    """(h, w) uint8 copy of a probability map, long side at most `side` px (kept for overlays)."""
    im = Image.fromarray((np.clip(probs, 0, 1) * 255).astype(np.uint8))
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(im)


def score_split(
    samples: list[EvalSample],
    predict: ProbabilityFn,
    bins: int,
    batch_size: int,
    crop: int,
    thumb_side: int = 0,
    name: str = "",
) -> SplitScores:
    """Predict every sample once and keep its histogram, image score and (if thumb_side) thumbnail."""

    def maps(images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{"probs": probs} for probs in predict(images)]

    return score_maps(samples, maps, ("probs",), bins, batch_size, crop, thumb_side, name)["probs"]


def score_maps(
    samples: list[EvalSample],
    maps: MapsFn,
    names: tuple[str, ...],
    bins: int,
    batch_size: int,
    crop: int,
    thumb_side: int = 0,
    name: str = "",
) -> dict[str, SplitScores]:
    """Like score_split for several maps per image (e.g. one per fusion rule): {map name: its scores}.

    `maps` must return a map for every name in `names`; every SplitScores holds the same samples.
    """
    results = {n: SplitScores() for n in names}
    first = results[names[0]]  # collects the skipped samples (the same for every map)
    with tqdm(total=len(samples), desc=f"evaluate {name}".strip(), unit="img", mininterval=1.0) as bar:
        for batch in _readable_batches(samples, crop, batch_size, first):
            for (sample, _, truth), by_name in zip(batch, maps([image for _, image, _ in batch]), strict=True):
                # A crop can cut the mark out, so the cropped mask decides; otherwise the manifest does.
                label = sample.has_watermark if crop == 0 and sample.has_watermark is not None else bool(truth.any())
                for n in names:
                    _add_image(results[n], sample, truth, by_name[n], label, bins, thumb_side)
            bar.update(len(batch))
        bar.update(len(samples) - bar.n)
    for result in results.values():
        result.skipped = first.skipped
    return results


def _add_image(
    result: SplitScores,
    sample: EvalSample,
    truth: np.ndarray,
    probs: np.ndarray,
    label: bool,
    bins: int,
    thumb_side: int,
) -> None:
    """Append one image's histogram, score, label, size and (if thumb_side) thumbnail to `result`."""
    if probs.shape != truth.shape:
        raise WmError(f"predictor returned {probs.shape} probabilities for {sample.id} of {truth.shape} px")
    result.samples.append(sample)
    result.hists.append(threshold_histograms(torch.from_numpy(probs), torch.from_numpy(truth), bins))
    result.scores.append(image_score(probs))
    result.has_watermark.append(label)
    result.sizes.append(truth.shape)
    if thumb_side:
        result.thumbnails.append(thumbnail(probs, thumb_side))


def score_heldout(params: Params, predict: ProbabilityFn) -> SplitScores | None:
    """Scores of the style-held-out split, or None when the prepared dataset has none (or none is readable)."""
    ev = params.evaluate
    samples = load_split(params.paths.prepared, HELDOUT_SPLIT, required=False)
    if not samples:
        log.info("no %s split in %s: only the ordinary test split is reported", HELDOUT_SPLIT, params.paths.prepared)
        return None
    scored = score_split(samples, predict, ev.threshold_grid, ev.batch_size, ev.crop, name=HELDOUT_SPLIT)
    if not scored.samples:
        log.warning(
            "%s: no readable %s image (%d skipped); not reported",
            params.paths.prepared,
            HELDOUT_SPLIT,
            len(scored.skipped),
        )
        return None
    return scored


def score_test_splits(params: Params, predict: ProbabilityFn) -> dict[str, SplitScores]:
    """test (required) and test_heldout (when prepared) scored with `predict`."""
    ev = params.evaluate
    thumb_side = ev.overlay_side if ev.n_overlay else 0
    test_samples = load_split(params.paths.prepared, "test")
    test = score_split(test_samples, predict, ev.threshold_grid, ev.batch_size, ev.crop, thumb_side, name="test")
    if not test.samples:
        raise WmError(f"{params.paths.prepared}: no readable test image")
    scored = {"test": test}
    heldout = score_heldout(params, predict)
    if heldout is not None:
        scored[HELDOUT_SPLIT] = heldout
    return scored


def real_clean_samples(corpus: str | Path, split: str, native: str | Path | None = None) -> list[EvalSample]:
    """The corpus's real clean pictures of `split` ("real_val" or "real_test") as samples without masks.

    Every pixel of them is clean: the false-positive area is all that is measured. Their
    background_kind is the corpus category (landscape, animal, document, ...). `native`: the folder of
    the native views (wmcore.data.native_views) of the split's larger pictures; each view of a picture
    of this corpus split follows, tagged NATIVE_TAG (views of other pictures, e.g. of another corpus,
    are left out). [] when the corpus is not built; no views when `native` has none.
    """

    def sample(folder: Path, row: dict, tags: tuple[str, ...]) -> EvalSample:
        return EvalSample(id=f"{split}:{'/'.join((*tags, row['file']))}", image=folder / row["file"], mask=None,
                          has_watermark=False, scene_text=bool(row.get("has_text")),
                          background_kind=str(row.get("category")), tags=tags)  # fmt: skip

    rows = corpus_rows(REAL_SPLITS[split], Path(corpus))
    stored = {row["file"] for row in rows}
    views = [row for row in corpus_rows(REAL_SPLITS[split], Path(native))
             if row.get("view_of") in stored] if native else []  # fmt: skip
    return [sample(Path(corpus), row, ()) for row in rows] + [sample(Path(native), row, (NATIVE_TAG,)) for row in views]


def _real_samples(params: Params, split: str) -> list[EvalSample]:
    """The real clean photos of `split` with their native views; [] (logged) without a corpus."""
    samples = real_clean_samples(params.paths.corpus, split, params.paths.corpus_native)
    if not samples:
        log.info("no %s photos in %s (run `wm corpus`): real-photo false positives not measured", split,
                 params.paths.corpus)  # fmt: skip
    return samples


def evaluation_splits(params: Params) -> dict[str, tuple[list[EvalSample], int]]:
    """Every split `wm evaluate` scores, by name: (its samples, the centre crop they are scored at).

    val and test are required (WmError without them); test_heldout, real_val and real_test are [] when absent.
    For scripts that score all of them with another predictor (bench/ocr_baseline.py, bench/gate_scores.py).
    """
    prepared, crop = params.paths.prepared, params.evaluate.crop
    splits = {name: (load_split(prepared, name, required=name != HELDOUT_SPLIT), crop)
              for name in ("val", "test", HELDOUT_SPLIT)}  # fmt: skip
    splits.update({name: (_real_samples(params, name), 0) for name in REAL_SPLITS})
    return splits


def score_real_clean(params: Params, predict: ProbabilityFn, split: str) -> SplitScores | None:
    """Scores of the corpus's real clean photos of `split` (native views included), or None when there are none."""
    ev = params.evaluate
    if not (samples := _real_samples(params, split)):
        return None
    scored = score_split(samples, predict, ev.threshold_grid, ev.batch_size, 0, name=split)
    return scored if scored.samples else None


def score_real_clean_maps(params: Params, maps: MapsFn, split: str) -> dict[str, SplitScores] | None:
    """Like score_real_clean, once per fusion rule ({rule: scores}) from one set of passes per photo."""
    ev = params.evaluate
    if not (samples := _real_samples(params, split)):
        return None
    scored = score_maps(samples, maps, FUSION_RULES, ev.threshold_grid, ev.batch_size, 0, name=split)
    return scored if scored[FUSION_RULES[0]].samples else None
