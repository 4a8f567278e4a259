"""What every segmentation model here shares: `predict`, probabilities from the logits its forward returns."""

from __future__ import annotations

import torch
from torch import nn


class Segmenter(nn.Module):
    """A module whose forward maps RGB (N, 3, H, W) in [0, 1] to logits (N, 1, H, W)."""

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, 1, H, W) in eval mode without autograd; restores the previous mode."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(x))
        finally:
            self.train(was_training)

    def fold_for_inference(self) -> Segmenter:
        """This model in its inference form (same outputs, fewer operations), in place; for inference only.
        The base form has nothing to fold."""
        return self
