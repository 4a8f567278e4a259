"""Segmentation loss: weighted BCE-with-logits plus soft Dice (plus, optionally, an image-level term and a
Lovasz hinge), in float32.

Every term is a mean over images (BCE: over pixels too), so the loss of a batch equals the
mean of the losses of equal-sized micro-batches: gradient accumulation of N micro-batches
with loss / N gives the gradient of the whole batch (tested). That is why Dice and the
image-level term are computed per image and averaged, not over the batch as one big image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmcore.config import LossParams
from wmcore.metrics import top_k_count


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over images of 1 - (2|P.T| + s) / (|P| + |T| + s), P = sigmoid(logits).

    Args:
        logits, target: (N, 1, H, W); target 0/1.
        smooth: s, px. On a clean image (T empty) the loss is |P| / (|P| + s): it still pushes
            predictions to 0 instead of being undefined.
    Returns: scalar tensor.
    """
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.dim()))
    overlap = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * overlap + smooth) / (total + smooth)).mean()


def image_score_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of BCE(s, has mark), s = the mean of the image's top-k probabilities.

    k is `wmcore.metrics.top_k_count` of the image's pixels (0.1%, at least 16), so s is the has-watermark
    score `wm predict` gates masks with: the term lifts it on crops holding a mark (a small mark's few
    pixels included) and lowers it on clean ones (a real photo's hot spot). Written out rather than
    F.binary_cross_entropy, which autocast refuses.

    Args:
        logits, target: (N, 1, H, W); target 0/1.
    Returns: scalar tensor.
    """
    n = logits.shape[0]
    probs = torch.sigmoid(logits.reshape(n, -1))
    score = probs.topk(top_k_count(probs.shape[1]), dim=1).values.mean(1).clamp(1e-6, 1.0 - 1e-6)
    has_mark = (target.reshape(n, -1).amax(1) > 0.5).to(score.dtype)
    return -(has_mark * score.log() + (1.0 - has_mark) * (1.0 - score).log()).mean()


def lovasz_hinge_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images of the Lovasz hinge (Berman et al., CVPR 2018): a convex surrogate of 1 - IoU.

    Per image, the hinge errors 1 - logit * (2t - 1) are sorted in decreasing order and weighted by the
    gradient of the Jaccard loss along that order, so the pixels that cost the image's IoU most get the
    largest weight (unlike BCE, which weighs every pixel alike). Per image, like Dice: accumulation stays exact.
    On a clean image (empty target) it is the largest hinge error: the hottest pixel is pushed down.

    Args:
        logits, target: (N, 1, H, W); target 0/1.
    Returns: scalar tensor.
    """
    n = logits.shape[0]
    x, t = logits.reshape(n, -1), target.reshape(n, -1)
    errors_sorted, order = torch.sort(1.0 - x * (2.0 * t - 1.0), dim=1, descending=True)  # per image
    truth = t.gather(1, order)
    total = truth.sum(1, keepdim=True)
    jaccard = 1.0 - (total - truth.cumsum(1)) / (total + (1.0 - truth).cumsum(1))
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * weights).sum(1).mean()


class SegmentationLoss(nn.Module):
    """bce_weight * BCE(pos_weight) + dice_weight * soft Dice + image_weight * image_score_loss
    + lovasz_weight * Lovasz hinge; forward(logits, target) -> scalar.

    Logits are cast to float32 first: under autocast they may be bf16/fp16, whose sums over a
    whole image lose the precision Dice needs.
    """

    def __init__(self, params: LossParams) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = params.bce_weight, params.dice_weight, params.dice_smooth
        self.image_weight, self.lovasz_weight = params.image_weight, params.lovasz_weight
        self.register_buffer("pos_weight", torch.tensor(params.pos_weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        loss = logits.new_zeros(())
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
            loss = loss + self.bce_weight * bce
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.smooth)
        if self.image_weight:
            loss = loss + self.image_weight * image_score_loss(logits, target)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_hinge_loss(logits, target)
        return loss
