"""Loss, gradient accumulation, clipping, non-finite skips and validation counts on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wmcore.config import LossParams
from wmcore.model import UNet
from wmcore.train.loss import SegmentationLoss, image_score_loss, lovasz_hinge_loss, soft_dice_loss
from wmcore.train.steps import StepTools, accumulate_gradients, clip_gradients, train_step, validation_step

CPU = torch.device("cpu")


def _tools(model: nn.Module, loss_fn: nn.Module | None = None, clip: float = 0.0, lr: float = 0.1) -> StepTools:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return StepTools(model, loss_fn or SegmentationLoss(LossParams()), optimizer, scaler, CPU, grad_clip=clip)


def _data(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = (torch.rand(n, 1, size, size, generator=g) < 0.2).float()
    y[1] = 0  # one clean image
    return x, y


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


# --------------------------------------------------------------------------- loss


def test_dice_known_answers():
    target = torch.zeros(1, 1, 2, 2)
    target[..., 0, :] = 1
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert float(soft_dice_loss(perfect, target, smooth=1e-6)) == pytest.approx(0.0, abs=1e-5)
    # probs 0.5 everywhere: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    assert float(soft_dice_loss(torch.zeros(1, 1, 2, 2), target, smooth=1.0)) == pytest.approx(0.4)
    # clean image, probs 0.5 on 4 px: loss = |P| / (|P| + s) = 2 / 3
    assert float(soft_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 1.0)) == pytest.approx(2 / 3)


def test_image_score_loss_known_answers():
    """BCE of the top-k mean probability (k = 16 of these 400 px) against whether the image holds a mark."""
    logits = torch.full((2, 1, 20, 20), -50.0)
    target = torch.zeros(2, 1, 20, 20)
    target[0, 0, 0, :4] = 1  # image 0: a 4 px mark; image 1 clean
    logits.view(2, -1)[:, :16] = torch.logit(torch.tensor(0.8))  # 16 px at 0.8 in both: score 0.8 each
    expected = -(math.log(0.8) + math.log(0.2)) / 2
    assert float(image_score_loss(logits, target)) == pytest.approx(expected, rel=1e-5)
    logits.view(2, -1)[:, :8] = 50.0  # 8 of the top 16 at ~1: score ~0.9
    expected = -(math.log(0.9) + math.log(0.1)) / 2
    assert float(image_score_loss(logits, target)) == pytest.approx(expected, rel=1e-4)
    on = SegmentationLoss(LossParams(image_weight=0.5))(logits, target)
    off = SegmentationLoss(LossParams())(logits, target)
    assert float(on - off) == pytest.approx(0.5 * expected, rel=1e-4)


def _lovasz_by_definition(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The Lovasz extension of the Jaccard loss at the hinge errors, from its definition with sets (one image)."""
    x, t = logits.flatten().tolist(), target.flatten().tolist()
    errors = [max(0.0, 1.0 - xi * (2 * ti - 1)) for xi, ti in zip(x, t, strict=True)]
    marked = {i for i, ti in enumerate(t) if ti > 0.5}

    def jaccard_loss(wrong: set[int]) -> float:  # pixels in `wrong` are mispredicted
        union = marked | wrong
        return 1.0 - len(marked - wrong) / len(union) if union else 0.0

    order = sorted(range(len(x)), key=lambda i: -errors[i])
    total, wrong = 0.0, set()
    for i in order:
        before = jaccard_loss(wrong)
        wrong.add(i)
        total += errors[i] * (jaccard_loss(wrong) - before)
    return total


def test_lovasz_hinge_matches_its_definition_per_image():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 1, 4, 5, generator=g) * 2
    target = (torch.rand(3, 1, 4, 5, generator=g) < 0.3).float()
    target[2] = 0  # a clean image: its largest hinge error
    expected = [_lovasz_by_definition(logits[i], target[i]) for i in range(3)]
    assert float(lovasz_hinge_loss(logits, target)) == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert expected[2] == pytest.approx(max(0.0, 1.0 + float(logits[2].max())), rel=1e-5)
    margin = (2 * target - 1) * 3.0  # every pixel on its side by a margin > 1
    assert float(lovasz_hinge_loss(margin, target)) == 0.0
    on = SegmentationLoss(LossParams(lovasz_weight=0.5))(logits, target)
    off = SegmentationLoss(LossParams())(logits, target)
    assert float(on - off) == pytest.approx(0.5 * sum(expected) / 3, rel=1e-4)


def test_lovasz_gradient_is_largest_on_the_pixels_that_cost_iou():
    target = torch.zeros(1, 1, 1, 4)
    target[..., :2] = 1
    logits = torch.tensor([[[[3.0, -0.5, 0.2, -3.0]]]], requires_grad=True)  # a missed mark pixel, a false one
    lovasz_hinge_loss(logits, target).backward()
    grad = logits.grad.flatten()
    assert grad[1] < 0 < grad[2]  # raise the missed pixel, lower the false one
    assert grad[0] == 0 and grad[3] == 0  # pixels beyond the margin are left alone


def test_loss_weights_combine_terms():
    logits, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    bce = SegmentationLoss(LossParams(bce_weight=1.0, dice_weight=0.0, pos_weight=1.0))(logits, target)
    assert float(bce) == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(logits, target)))
    both = SegmentationLoss(LossParams(bce_weight=2.0, dice_weight=3.0, pos_weight=1.0))(logits, target)
    assert float(both) == pytest.approx(2 * float(bce) + 3 * float(soft_dice_loss(logits, target)), rel=1e-6)


def test_loss_of_bf16_logits_is_float32():
    logits = torch.randn(2, 1, 8, 8).bfloat16()
    assert SegmentationLoss(LossParams())(logits, torch.zeros(2, 1, 8, 8)).dtype == torch.float32


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("image_weight", [0.0, 1.0])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_accumulated_micro_batches_equal_one_batch(micro, image_weight):
    # BatchNorm in eval mode uses running statistics, so the model's output for an image does not
    # depend on which other images share its micro-batch; everything else in the loss is a mean
    # over images, so N micro-batches with loss / N must give the full batch's gradient.
    torch.manual_seed(0)
    model = UNet(base_width=4, depth=2).eval()
    x, y = _data()
    tools = _tools(model, SegmentationLoss(LossParams(image_weight=image_weight)))  # every term a mean over images
    accumulate_gradients(tools, [(x, y)])
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    loss = accumulate_gradients(tools, list(zip(x.split(micro), y.split(micro), strict=True)))
    for g_full, g_acc in zip(full, _grads(model), strict=True):
        torch.testing.assert_close(g_acc, g_full, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(tools.loss_fn(model(x), y)), rel=1e-5)


def test_training_mode_batchnorm_is_why_eval_mode_is_needed():
    # With batch statistics the micro-batches see different normalisation: gradients differ.
    torch.manual_seed(0)
    model = UNet(base_width=4, depth=2).train()
    x, y = _data()
    tools = _tools(model)
    accumulate_gradients(tools, [(x, y)])
    full = _grads(model)
    model.zero_grad(set_to_none=True)
    accumulate_gradients(tools, list(zip(x.split(2), y.split(2), strict=True)))
    assert not all(torch.allclose(a, b, rtol=1e-4) for a, b in zip(full, _grads(model), strict=True))


# --------------------------------------------------------------------------- clipping and skips


@pytest.mark.parametrize("max_norm", [1e-3, 0.05, 1e6])
def test_clipping_bounds_the_global_norm(max_norm):
    torch.manual_seed(1)
    model = UNet(base_width=4, depth=2)
    tools = _tools(model, clip=max_norm)
    accumulate_gradients(tools, [_data(4)])
    before = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    reported = clip_gradients(tools)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert reported == pytest.approx(float(before), rel=1e-5)
    assert float(after) <= max_norm * (1 + 1e-5)
    if max_norm > float(before):
        assert float(after) == pytest.approx(float(before), rel=1e-6)  # nothing to clip


def test_no_clipping_when_zero():
    model = UNet(base_width=4, depth=2)
    tools = _tools(model, clip=0.0)
    accumulate_gradients(tools, [_data(2)])
    assert clip_gradients(tools) is None


class _ScaledLoss(nn.Module):
    """The real loss times a factor (nan/inf make it non-finite)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = SegmentationLoss(LossParams()), factor

    def forward(self, logits, target):
        return self.inner(logits, target) * self.factor


@pytest.mark.parametrize("factor", [math.nan, math.inf])
def test_non_finite_loss_skips_the_update(factor):
    torch.manual_seed(2)
    model = UNet(base_width=4, depth=2)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(_tools(model, _ScaledLoss(factor), clip=1.0), [_data(2)])
    assert result["skipped"] and not math.isfinite(result["loss"])
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_finite_step_updates_and_clears_gradients():
    torch.manual_seed(2)
    model = UNet(base_width=4, depth=2)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(_tools(model, clip=1.0), [_data(2), _data(2, seed=1)])
    assert not result["skipped"] and math.isfinite(result["loss"]) and result["grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- validation


class _Oracle(nn.Module):
    """Returns fixed logits whatever the input (a model with known predictions)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.calls = 0
        self.unused = nn.Parameter(torch.zeros(1))  # an optimizer needs one

    def forward(self, x):
        out = self.logits[self.calls : self.calls + x.shape[0]]
        self.calls += x.shape[0]
        return out


def test_validation_counts_known_answer():
    target = torch.zeros(2, 1, 2, 2)
    target[0, 0, 0] = 1  # 2 watermark pixels in image 0
    logits = torch.full((2, 1, 2, 2), -4.0)
    logits[0, 0, 0, 0] = 4.0  # tp = 1
    logits[1, 0, 1, 1] = 0.4  # fp at 0.5 (p = 0.6), gone at a higher threshold
    model = _Oracle(logits)
    result = validation_step(
        _tools(model), [(torch.zeros(1, 3, 2, 2), target[:1]), (torch.zeros(1, 3, 2, 2), target[1:])]
    )
    # at 0.5: tp 1, fp 1, fn 1 -> F1 = 2/4, IoU = 1/3
    assert result["val_f1"] == pytest.approx(0.5)
    assert result["val_iou"] == pytest.approx(1 / 3)
    assert result["val_f1_best"] == pytest.approx(2 / 3)  # threshold above 0.6: tp 1, fn 1
    assert 0.59 < result["val_threshold"] <= 0.98
    assert result["val_images"] == 2


def test_batchnorm_momentum_per_step_makes_micro_batches_track_like_one_batch():
    from wmcore.train.setup import scale_batchnorm_momentum

    net = UNet(base_width=4, depth=2)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert scale_batchnorm_momentum(net, 1) == 0 and scale_batchnorm_momentum(net, 4) == n_bn > 0
    assert {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {0.025}
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()  # sample i = i
    whole, micro, plain = nn.BatchNorm2d(1), nn.BatchNorm2d(1), nn.BatchNorm2d(1)
    whole(x)  # one batch of 8: running mean 0.1 * 3.5
    scale_batchnorm_momentum(micro, 4)
    for chunk in x.split(2):  # 2 x 4 accumulation: four updates of two images each
        micro(chunk)
        plain(chunk)
    assert abs(float(micro.running_mean) - float(whole.running_mean)) < 0.02
    assert abs(float(plain.running_mean) - float(whole.running_mean)) > 0.5  # unscaled: four times the step


def test_uint8_batches_become_the_same_float_batches_on_the_device():
    """loader.uint8_batches: to_device turns uint8 images / 0-1 masks into the float32 tensors a float batch holds,
    in the model's memory format, so a training step cannot tell them apart."""
    g = torch.Generator().manual_seed(3)
    x8 = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    y8 = (torch.rand(4, 1, 16, 16, generator=g) < 0.3).to(torch.uint8)
    xf, yf = x8.float() / 255.0, y8.float()
    for channels_last in (False, True):
        model = UNet(depth=2, base_width=4)
        tools = _tools(model)
        tools.channels_last = channels_last
        x, y = tools.to_device((x8, y8))
        assert x.dtype == y.dtype == torch.float32 and torch.equal(x, xf) and torch.equal(y, yf)
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
        twin = UNet(depth=2, base_width=4)
        twin.load_state_dict(model.state_dict())
        twin_tools = _tools(twin)
        twin_tools.channels_last = channels_last
        assert train_step(tools, [(x8, y8)]) == train_step(twin_tools, [(xf, yf)])
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b)
