"""Triplet loss with hard-negative mining on L2-normalised embeddings: ``mean(relu(|a - p|^2 - |a - n|^2 + margin))``.

F. Schroff, D. Kalenichenko, J. Philbin, "FaceNet", CVPR 2015; for speakers J. S. Chung et al., "In defence of metric
learning for speaker recognition", Interspeech 2020. voxceleb_trainer's ``triplet``, mining on the full (B, B) distance
matrix: with probability ``hard_prob`` one of the ``hard_rank + 1`` closest negatives, else any; ``hard_rank < 0``:
semi-hard (``d_ap^2 < d_an^2 < d_ap^2 + margin``, else any).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import DEFAULTS
from loss._common import accuracy, check_input, cosine_matrix, fp32


class LossFunction(nn.Module):
    """Anchor: utterance 0 of each speaker; positive: the mean of the others. Rows are distinct speakers."""

    test_normalize = True
    min_per_speaker = 2

    def __init__(self, margin: float = DEFAULTS.margin, hard_rank: int = DEFAULTS.hard_rank,
                 hard_prob: float = DEFAULTS.hard_prob) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"triplet needs --margin >= 0, got {margin}")
        if not 0.0 <= hard_prob <= 1.0:
            raise ValueError(f"triplet needs 0 <= --hard_prob <= 1, got {hard_prob}")
        self.margin = float(margin)
        self.hard_rank = int(hard_rank)
        self.hard_prob = float(hard_prob)

    def mine_negatives(self, dist2: torch.Tensor) -> torch.Tensor:
        """dist2 (B, B) squared anchor-positive distances -> (B,) index of the negative positive for each anchor."""
        batch = dist2.size(0)
        eye = torch.eye(batch, dtype=torch.bool, device=dist2.device)
        if self.hard_rank < 0:
            ap = dist2.diagonal()[:, None]  # (B, 1)
            semi_hard = (dist2 > ap) & (dist2 < ap + self.margin) & ~eye
            allowed = torch.where(semi_hard.any(dim=1, keepdim=True), semi_hard, ~eye)
            # A uniform random choice among the allowed columns: the largest of independent uniforms.
            noise = torch.rand(batch, batch, device=dist2.device).masked_fill(~allowed, -1.0)
            return noise.argmax(dim=1)
        order = dist2.masked_fill(eye, float("inf")).argsort(dim=1)  # (B, B): hardest first, self last
        n_hard = min(self.hard_rank + 1, batch - 1)
        hard = torch.randint(0, n_hard, (batch,), device=dist2.device)
        anyone = torch.randint(0, batch - 1, (batch,), device=dist2.device)
        column = torch.where(torch.rand(batch, device=dist2.device) < self.hard_prob, hard, anyone)
        return order.gather(1, column[:, None]).squeeze(1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B >= 2, nPerSpeaker >= 2, nOut), label (B,) -> (loss, % of anchors nearest their own positive)."""
        check_input(x, label, self.min_per_speaker, "triplet")
        if x.size(0) < 2:
            raise ValueError(f"loss 'triplet' needs at least 2 speakers per batch to find negatives, got {x.size(0)}")
        with fp32(x):
            x = x.float()
            anchor = F.normalize(x[:, 0, :], dim=1)  # (B, nOut)
            positive = F.normalize(x[:, 1:, :].mean(dim=1), dim=1)  # (B, nOut)
            cos = cosine_matrix(anchor, positive)  # (B, B)
            dist2 = 2.0 - 2.0 * cos  # squared distances of unit vectors, (B, B)
            negative = self.mine_negatives(dist2.detach())  # (B,)
            rows = torch.arange(x.size(0), device=x.device)
            loss = F.relu(dist2[rows, rows] - dist2[rows, negative] + self.margin).mean()
            return loss, accuracy(cos, rows)
