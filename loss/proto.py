"""Prototypical loss: each speaker's first utterance is classified among the batch's prototypes (mean of the other
utterances) by negative squared Euclidean distance.

J. Snell, K. Swersky, R. Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017; for speakers J. S. Chung et
al., "In defence of metric learning for speaker recognition", Interspeech 2020. voxceleb_trainer's ``proto``, computing
the full (B, B) distance matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss._common import accuracy, check_input, fp32


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of every row of a (M, D) to every row of b (K, D) -> (M, K)."""
    return (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * a @ b.t()


class LossFunction(nn.Module):
    """Rows of the batch are distinct speakers; ``label`` is only checked, the targets are the row indices."""

    test_normalize = False
    min_per_speaker = 2

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker >= 2, nOut), label (B,) -> (loss, % of first utterances nearest their own prototype)."""
        check_input(x, label, self.min_per_speaker, "proto")
        with fp32(x):
            x = x.float()
            positive = x[:, 0, :]  # (B, nOut)
            anchor = x[:, 1:, :].mean(dim=1)  # (B, nOut)
            logits = -squared_distances(positive, anchor)  # (B, B)
            target = torch.arange(x.size(0), device=x.device)
            return F.cross_entropy(logits, target), accuracy(logits, target)
