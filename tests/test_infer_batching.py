"""AdaptiveBatchSizer: growth, back-off on (fake) OOM, bounds, the size cache; host budget end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wmcore.config import load_params
from wmcore.errors import WmError
from wmcore.infer.batching import AdaptiveBatchSizer, BatchSizeCache, check_budget
from wmcore.infer.predictor import clear_predictor_cache, get_predictor
from wmcore.model.checkpoint import checkpoint_dict, save_checkpoint
from wmcore.model.unet import UNet
from wmcore.runtime.memory import HostMemoryBudgetExceeded, is_oom_error

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class FakeModel:
    """Records every call; raises an OOM error for batches larger than `limit`."""

    def __init__(self, limit: int = 10**9, error: type[Exception] = torch.OutOfMemoryError) -> None:
        self.limit, self.error = limit, error
        self.calls: list[list[int]] = []
        self.done: list[int] = []

    def __call__(self, chunk):
        self.calls.append(list(chunk))
        if len(chunk) > self.limit:
            raise self.error("CUDA out of memory (fake)")
        self.done.extend(chunk)
        return [x * 10 for x in chunk]


def test_grows_up_to_max_while_memory_is_ok():
    model = FakeModel()
    sizer = AdaptiveBatchSizer(start=1, min_size=1, max_size=8, memory_ok=lambda n: True)
    out = sizer.run(list(range(40)), model)
    assert out == [x * 10 for x in range(40)]
    assert [len(c) for c in model.calls][:5] == [1, 2, 4, 8, 8]
    assert sizer.size == 8 and sizer.success_rate == 1.0


def test_does_not_grow_when_memory_probe_says_no():
    model = FakeModel()
    sizer = AdaptiveBatchSizer(start=2, min_size=1, max_size=8, memory_ok=lambda n: n <= 4)
    sizer.run(list(range(20)), model)
    assert max(len(c) for c in model.calls) == 4


def test_a_pixel_limit_caps_chunks_without_growing_or_losing_items():
    model = FakeModel()
    sizer = AdaptiveBatchSizer(start=4, min_size=1, max_size=8, memory_ok=lambda n: True)
    assert sizer.run(list(range(9)), model, limit=2) == [x * 10 for x in range(9)]
    assert [len(c) for c in model.calls] == [2, 2, 2, 2, 1] and sizer.size == 4  # cut chunks never grow it
    sizer.run(list(range(3)), model, limit=0)  # below one item: still one at a time, never zero
    assert [len(c) for c in model.calls[-3:]] == [1, 1, 1]


@pytest.mark.parametrize(("megapixels", "tile", "expected"), [(0.0, 512, None), (0.3, 512, 1), (0.3, 384, 2),
                                                              (0.3, 128, 18), (0.01, 512, 1)])  # fmt: skip
def test_predictor_batch_limit_follows_the_pixel_budget(tmp_path, megapixels, tile, expected):
    ckpt = tmp_path / "m.pt"
    net = UNet(base_width=4, depth=2)
    save_checkpoint(ckpt, checkpoint_dict(net))
    params = load_params(REPO_PARAMS, overrides=[f"predict.max_batch_megapixels={megapixels}", "paths.pretrained=null",
                                                 f"paths.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    clear_predictor_cache()
    predictor = get_predictor(ckpt, params)
    assert predictor.batch_limit(tile, tile) == expected
    image = np.random.default_rng(0).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    capped = predictor.predict([image])[0]
    clear_predictor_cache()
    free = get_predictor(ckpt, load_params(REPO_PARAMS, overrides=["predict.max_batch_megapixels=0", "paths.pretrained=null",
                                                                   f"paths.cache_dir={tmp_path / 'cache'}"]))  # fmt: skip
    np.testing.assert_allclose(capped, free.predict([image])[0], atol=1e-5)  # only the batching differs
    clear_predictor_cache()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError, HostMemoryBudgetExceeded])
def test_oom_halves_and_retries_only_the_failed_batch(error):
    model = FakeModel(limit=3, error=error)
    sizer = AdaptiveBatchSizer(start=8, min_size=1, max_size=8, memory_ok=lambda n: True)
    out = sizer.run(list(range(21)), model)
    assert out == [x * 10 for x in range(21)]
    assert model.done == list(range(21))  # every item processed exactly once, in order
    assert [len(c) for c in model.calls[:3]] == [8, 4, 2]  # 8 fails, 4 fails, 2 works
    assert model.calls[0][0] == model.calls[1][0] == model.calls[2][0] == 0  # the same failed batch retried
    assert sizer.size <= 3 and sizer.backoffs == 2
    assert sizer.success_rate == pytest.approx((len(model.calls) - 2) / len(model.calls))


def test_stays_at_the_backed_off_size():
    model = FakeModel(limit=5)
    sizer = AdaptiveBatchSizer(start=8, min_size=1, max_size=16, memory_ok=lambda n: True)
    sizer.run(list(range(100)), model)
    assert sizer.backoffs == 1 and {len(c) for c in model.calls[1:]} == {4}


def test_oom_at_min_size_is_a_clear_error():
    sizer = AdaptiveBatchSizer(start=4, min_size=2, max_size=4)
    with pytest.raises(WmError, match="smallest batch size 2"):
        sizer.run(list(range(10)), FakeModel(limit=1))


def test_other_errors_propagate_unchanged():
    def broken(chunk):
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        AdaptiveBatchSizer(start=2).run([1, 2, 3], broken)


def test_fixed_size_when_not_adaptive():
    model = FakeModel(limit=1)
    sizer = AdaptiveBatchSizer(start=2, adaptive=False, memory_ok=lambda n: True)
    with pytest.raises(torch.OutOfMemoryError):
        sizer.run([1, 2, 3], model)


def test_size_is_remembered_per_key(tmp_path):
    cache = BatchSizeCache(tmp_path / "sizes.json")
    first = AdaptiveBatchSizer(start=8, max_size=8, cache=cache, cache_key="cpu|m|tile64")
    first.run(list(range(10)), FakeModel(limit=2))
    first.save()
    assert cache.get("cpu|m|tile64") == 2
    assert AdaptiveBatchSizer(start=8, max_size=8, cache=cache, cache_key="cpu|m|tile64").size == 2
    assert AdaptiveBatchSizer(start=8, max_size=8, cache=cache, cache_key="cpu|other|tile64").size == 8
    grown = AdaptiveBatchSizer(start=1, max_size=8, memory_ok=lambda n: True, cache=cache, cache_key="k2")
    grown.run([1, 2], FakeModel())  # grew to 2 after the first batch, but 2 never ran a full batch
    grown.save()
    assert grown.size == 2 and cache.get("k2") == 1  # only a size that completed a full batch is remembered
    (tmp_path / "sizes.json").write_text("{not json")
    assert AdaptiveBatchSizer(start=4, max_size=8, cache=cache, cache_key="cpu|m|tile64").size == 4


def test_check_budget():
    check_budget(100.0, 0)  # 0 = no budget
    check_budget(100.0, 200)
    with pytest.raises(HostMemoryBudgetExceeded) as err:
        check_budget(300.0, 200)
    assert is_oom_error(err.value)


def test_predictor_backs_off_under_host_budget_and_finishes_every_image(tmp_path):
    torch.manual_seed(0)
    net = UNet(base_width=4, depth=2).eval()
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, checkpoint_dict(net))
    # One 64x64 tile of a base-4 UNet is estimated at ~0.4 MB: a 1 MB budget allows 2 tiles, not 4.
    common = {"paths.cache_dir": str(tmp_path / "cache"), "predict.tile_size": 64, "predict.tile_overlap": 8,
              "predict.batch_size": 4, "predict.max_batch_size": 4, "base.threads": 1}  # fmt: skip
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(7)]
    clear_predictor_cache()
    free = get_predictor(ckpt, load_params(overrides=common)).predict(images)
    clear_predictor_cache()
    tight = get_predictor(ckpt, load_params(overrides={**common, "predict.host_memory_budget_mb": 1}))
    out = tight.predict(images)
    stats = tight.stats()
    assert stats["batch_backoffs"] >= 1 and stats["batch_size_final"] == 2 and stats["batch_success_rate"] < 1
    for a, b in zip(out, free, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    clear_predictor_cache()
