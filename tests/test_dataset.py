"""Dataset, crops, decoded-image caches, sampler and loader factory on tiny prepared data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from tests.fixtures import make_tiny_prepared
from wmcore.config import LoaderParams
from wmcore.data.crops import centre_crop, pad_to, random_crop, random_flips
from wmcore.data.dataset import WatermarkDataset, as_float, read_manifest
from wmcore.data.decoded_cache import SampleDecodeError
from wmcore.data.loader import EpochSampler, make_loader
from wmcore.errors import WmError

CPU = torch.device("cpu")


def _dataset(root, tmp_path, split="train", crop=64, train=True, cache="none", share=0.5, seed=3):
    return WatermarkDataset(root, split, crop, train, cache, tmp_path / "cache", multiscale_share=share, seed=seed)


def _batches(dataset, epochs=(1, 2), workers=0, persistent=False, batch_size=3):
    params = LoaderParams(workers=workers, persistent_workers=persistent, cache="none")
    loader = make_loader(dataset, params, batch_size, shuffle=True, device=CPU, seed=7, drop_last=True)
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out += [(x.clone(), y.clone()) for x, y in loader]
    return out


# --------------------------------------------------------------------------- crops


def test_centre_crop_known_answer():
    image = np.arange(25, dtype=np.uint8).reshape(5, 5, 1).repeat(3, axis=2)
    mask = np.arange(25, dtype=np.uint8).reshape(5, 5)
    img, m = centre_crop(image, mask, 3)
    assert m.tolist() == [[6, 7, 8], [11, 12, 13], [16, 17, 18]]
    assert (img[..., 0] == m).all()


def test_pad_to_reflects_image_and_mask_alike():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)
    mask = np.arange(6, dtype=np.uint8).reshape(2, 3)
    img, m = pad_to(image, mask, 4, 5)
    assert m.shape == (4, 5) and img.shape == (4, 5, 3)
    assert (img[..., 1] == m).all()
    assert m[1].tolist() == [1, 0, 1, 2, 1]  # reflect, one column each side


@pytest.mark.parametrize("share", [0.0, 1.0])
@pytest.mark.parametrize(("h", "w", "crop"), [(96, 128, 64), (40, 50, 64), (64, 64, 64)])
def test_random_crop_shape_and_binary_mask(share, h, w, crop):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.where(rng.random((h, w)) < 0.3, 255, 0).astype(np.uint8)
    img, m = random_crop(image, mask, crop, np.random.default_rng(1), share, 0.5)
    assert img.shape == (crop, crop, 3) and m.shape == (crop, crop)
    assert set(np.unique(m)) <= {0, 255}


def test_multiscale_crop_shows_a_downscaled_view():
    # Vertical stripes 2 px wide: a full-resolution crop keeps them, a downscaled view blurs them.
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, ::4] = image[:, 1::4] = 255
    mask = np.zeros((128, 128), np.uint8)
    plain, _ = random_crop(image, mask, 32, np.random.default_rng(0), 0.0, 0.5)
    scaled, _ = random_crop(image, mask, 32, np.random.default_rng(0), 1.0, 0.5)
    assert set(np.unique(plain)) == {0, 255}
    assert len(np.unique(scaled)) > 2


@pytest.mark.parametrize(("side", "crop"), [(97, 64), (128, 64), (200, 112), (63, 48)])
def test_torch_resize_matches_pil_within_two_grey_levels(side, crop):
    """loader.multiscale_resize: torch's uint8 antialiased bilinear against PIL's, on noise, stripes and a
    mask; the same random draws (window and place), so only the resampled values may differ."""
    rng = np.random.default_rng(side)
    image = rng.integers(0, 256, (side, side + 9, 3), dtype=np.uint8)
    image[:, ::5] = 255  # hard edges, where the two kernels' rounding differs most
    mask = np.where(rng.random((side, side + 9)) < 0.3, 255, 0).astype(np.uint8)
    pil = random_crop(image, mask, crop, np.random.default_rng(7), 1.0, 0.5, "pil")
    fast = random_crop(image, mask, crop, np.random.default_rng(7), 1.0, 0.5, "torch")
    assert fast[0].shape == pil[0].shape == (crop, crop, 3) and fast[0].dtype == np.uint8
    assert np.abs(fast[0].astype(int) - pil[0]).max() <= 2
    assert np.abs(fast[0].astype(int) - pil[0]).mean() < 0.5
    assert set(np.unique(fast[1])) <= {0, 255}
    assert (fast[1] != pil[1]).mean() < 0.01  # the 50 % cut moves only pixels the two put at 127 / 128
    plain = random_crop(image, mask, crop, np.random.default_rng(7), 0.0, 0.5, "torch")
    assert np.array_equal(plain[0], random_crop(image, mask, crop, np.random.default_rng(7), 0.0, 0.5, "pil")[0])


def test_torch_resize_views_through_the_loader_are_deterministic(tiny_prepared, tmp_path):
    """The same keys give the same torch-resized views in the main process and in worker processes."""
    data = [WatermarkDataset(tiny_prepared, "train", 64, True, "none", tmp_path / "cache", multiscale_share=1.0,
                             seed=3, resize="torch") for _ in range(2)]  # fmt: skip
    here, workers = _batches(data[0]), _batches(data[1], workers=2)
    pil = _batches(WatermarkDataset(tiny_prepared, "train", 64, True, "none", tmp_path / "cache",
                                    multiscale_share=1.0, seed=3))  # fmt: skip
    for (x0, y0), (x1, y1), (x2, _) in zip(here, workers, pil, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
        assert 0 < (x0 - x2).abs().max() <= 2 / 255 + 1e-6


def test_flips_are_exact_mirrors():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    mask = np.arange(4, dtype=np.uint8).reshape(2, 2)
    seen = set()
    for seed in range(16):
        img, m = random_flips(image, mask, np.random.default_rng(seed))
        assert (img[..., 0] // 3 == m).all()  # image and mask flipped together
        seen.add(tuple(m.ravel()))
    assert seen == {(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)}


# --------------------------------------------------------------------------- dataset


def test_outputs_shapes_dtypes_ranges(tiny_prepared, tmp_path):
    x, y = _dataset(tiny_prepared, tmp_path)[(0, 1)]
    assert x.shape == (3, 64, 64) and y.shape == (1, 64, 64)
    assert x.dtype == y.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("crop", "shape"), [(0, (96, 128)), (None, (96, 128)), (64, (64, 64)), (160, (160, 160))])
def test_eval_views_are_deterministic(tiny_prepared, tmp_path, crop, shape):
    ds = _dataset(tiny_prepared, tmp_path, split="val", crop=crop, train=False)
    x1, y1 = ds[1]
    x2, y2 = ds[(1, 5, 2)]  # the epoch does not matter for evaluation views
    assert x1.shape[1:] == shape and y1.shape[1:] == shape
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_eval_whole_image_equals_the_file(tiny_prepared, tmp_path):
    from PIL import Image

    ds = _dataset(tiny_prepared, tmp_path, split="test", crop=0, train=False)
    x, y = ds[2]
    row = read_manifest(tiny_prepared, "test")[0][2]
    expected = np.asarray(Image.open(tiny_prepared / row["image"]))
    assert np.array_equal((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    assert np.array_equal(y[0].numpy() > 0, np.asarray(Image.open(tiny_prepared / row["mask"])) > 127)


def test_training_views_depend_only_on_seed_epoch_index(tiny_prepared, tmp_path):
    a, b = _dataset(tiny_prepared, tmp_path), _dataset(tiny_prepared, tmp_path)
    assert torch.equal(a[(3, 2)][0], b[(3, 2)][0])
    assert not torch.equal(a[(3, 2)][0], a[(3, 1)][0])  # a new epoch gives a new view
    other_seed = _dataset(tiny_prepared, tmp_path, seed=4)
    assert not torch.equal(a[(3, 2)][0], other_seed[(3, 2)][0])


def test_missing_manifest_and_bad_row_are_clear_errors(tmp_path):
    with pytest.raises(WmError, match="manifest not found"):
        WatermarkDataset(tmp_path, "train", 32, True)
    (tmp_path / "manifest.jsonl").write_text('{"split": "train", "id": "a"}\n')
    with pytest.raises(WmError, match=r"manifest.jsonl:1"):
        WatermarkDataset(tmp_path, "train", 32, True)
    with pytest.raises(WmError, match="unknown split"):
        WatermarkDataset(tmp_path, "holdout", 32, True)


@pytest.mark.parametrize("cache", ["none", "ram", "mmap"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_unreadable_sample_is_a_logged_skip(tiny_prepared, tmp_path, caplog, cache, damage):
    rows = read_manifest(tiny_prepared, "train")[0]
    path = tiny_prepared / rows[2]["image"]
    if damage == "garbage":
        path.write_bytes(b"not a png at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING):
        ds = _dataset(tiny_prepared, tmp_path, cache=cache)
    assert len(ds) == len(rows) - 1
    assert rows[2]["id"] not in [s.id for s in ds.samples]
    assert "skipping sample train-0002" in caplog.text
    assert len(_batches(ds, epochs=(1,))) == (len(rows) - 1) // 3


def test_decode_failure_after_probe_uses_next_sample(tiny_prepared, tmp_path, caplog):
    ds = _dataset(tiny_prepared, tmp_path, split="val", crop=0, train=False)
    original = ds.source.get

    def failing(index):
        if index == 1:
            raise SampleDecodeError("val-0001: simulated decode failure")
        return original(index)

    ds.source.get = failing
    with caplog.at_level(logging.WARNING):
        assert torch.equal(ds[1][0], ds[2][0])
    assert "simulated decode failure" in caplog.text


def test_no_readable_sample_is_a_clear_error(tmp_path):
    root = make_tiny_prepared(tmp_path / "p", n_train=2, n_val=1, n_test=1)
    for row in read_manifest(root, "train")[0]:
        (root / row["mask"]).write_bytes(b"")
    with pytest.raises(WmError, match="no readable samples"):
        _dataset(root, tmp_path)


# --------------------------------------------------------------------------- caches


@pytest.mark.parametrize("cache", ["ram", "mmap"])
def test_cache_gives_identical_batches(tiny_prepared, tmp_path, cache):
    reference = _batches(_dataset(tiny_prepared, tmp_path, cache="none"))
    cached = _dataset(tiny_prepared, tmp_path, cache=cache)
    for _ in range(2):  # the second pass reads from the filled cache
        batches = _batches(cached)
        assert len(batches) == len(reference) == 4
        for (x0, y0), (x1, y1) in zip(reference, batches, strict=True):
            assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_worker_count_and_persistence_do_not_change_batches(tiny_prepared, tmp_path):
    reference = _batches(_dataset(tiny_prepared, tmp_path, cache="mmap"))
    parallel = _batches(_dataset(tiny_prepared, tmp_path, cache="mmap"), workers=2, persistent=True)
    for (x0, y0), (x1, y1) in zip(reference, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_uint8_batches_hold_the_float_batches_values_in_a_quarter_of_the_bytes(tiny_prepared, tmp_path):
    """loader.uint8_batches: same keys, same views; as_float (on the device) gives the float batches exactly."""
    reference = _batches(_dataset(tiny_prepared, tmp_path, cache="mmap"))
    small = WatermarkDataset(tiny_prepared, "train", 64, True, "mmap", tmp_path / "cache", multiscale_share=0.5,
                             seed=3, uint8=True)  # fmt: skip
    batches = _batches(small, workers=2)  # through worker processes' shared memory
    assert len(batches) == len(reference) == 4
    for (x0, y0), (x1, y1) in zip(reference, batches, strict=True):
        assert x1.dtype == y1.dtype == torch.uint8 and y1.max() <= 1
        assert x1.element_size() * x1.nelement() * 4 == x0.element_size() * x0.nelement()
        x2, y2 = as_float(x1, y1)
        assert torch.equal(x2, x0) and torch.equal(y2, y0) and y2.dtype == torch.float32
    val = WatermarkDataset(tiny_prepared, "val", 48, False, "none", tmp_path / "cache", uint8=True)
    assert torch.equal(as_float(*val[0])[0], _dataset(tiny_prepared, tmp_path, "val", 48, False)[0][0])


def test_mmap_cache_is_built_once_and_keyed_by_manifest(tiny_prepared, tmp_path):
    first = _dataset(tiny_prepared, tmp_path, cache="mmap")
    stamp = first.source.data_path.stat().st_mtime_ns
    second = _dataset(tiny_prepared, tmp_path, cache="mmap")
    assert second.source.data_path == first.source.data_path
    assert second.source.data_path.stat().st_mtime_ns == stamp
    val = _dataset(tiny_prepared, tmp_path, split="val", train=False, cache="mmap")
    assert val.source.data_path != first.source.data_path
    manifest = tiny_prepared / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))  # a changed dataset
    changed = _dataset(tiny_prepared, tmp_path, cache="mmap")
    assert changed.source.data_path != first.source.data_path and len(changed) == len(first) - 1


def test_ram_cache_cannot_be_altered_through_a_view(tiny_prepared, tmp_path):
    ds = _dataset(tiny_prepared, tmp_path, split="val", crop=0, train=False, cache="ram")
    before = ds[0][0].clone()
    ds[0][0].mul_(0)  # the returned tensor is a copy
    assert torch.equal(ds[0][0], before)
    image, _ = ds.source.get(0)
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1


# --------------------------------------------------------------------------- sampler and loader


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert sorted(i for i, _, _ in a) == list(range(10))
    assert all(epoch == 3 and repeat == 0 for _, epoch, repeat in a)
    b.set_epoch(4)
    assert list(a) != list(b)


def test_sampler_shards_ranks_and_repeats_passes():
    shards = [list(EpochSampler(10, seed=2, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    first_pass = [i for s in shards for i, _, repeat in s if repeat == 0]
    assert sorted(first_pass) == list(range(10))
    long = list(EpochSampler(4, seed=0, num_samples=10, rank=0, world_size=1))
    assert len(long) == 10 and [r for _, _, r in long] == [0] * 4 + [1] * 4 + [2] * 2


def test_sampler_over_fixed_indices_in_order():
    assert [i for i, _, _ in EpochSampler([5, 2, 9], shuffle=False, rank=0, world_size=1)] == [5, 2, 9]


@pytest.mark.parametrize(
    ("workers", "persistent", "pin", "device", "expect"),
    [
        (
            0,
            True,
            True,
            "cpu",
            {"num_workers": 0, "persistent_workers": False, "prefetch_factor": None, "pin_memory": False},
        ),
        (
            2,
            True,
            True,
            "cpu",
            {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 3, "pin_memory": False},
        ),
        (
            2,
            False,
            True,
            "cuda",
            {"num_workers": 2, "persistent_workers": False, "prefetch_factor": 3, "pin_memory": True},
        ),
        (
            0,
            False,
            False,
            "cuda",
            {"num_workers": 0, "persistent_workers": False, "prefetch_factor": None, "pin_memory": False},
        ),
    ],
)
def test_loader_factory_options(tiny_prepared, tmp_path, workers, persistent, pin, device, expect):
    params = LoaderParams(workers=workers, persistent_workers=persistent, pin_memory=pin, prefetch_factor=3)
    loader = make_loader(
        _dataset(tiny_prepared, tmp_path), params, 4, True, torch.device(device), seed=5, drop_last=True
    )
    assert {k: getattr(loader, k) for k in expect} == expect
    assert isinstance(loader.sampler, EpochSampler) and loader.batch_size == 4 and loader.drop_last
    assert loader.generator.initial_seed() == 5
