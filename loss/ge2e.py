"""Generalised end-to-end (GE2E) softmax loss: every utterance is classified among the batch's speaker centroids (its
own excluding itself) by ``w * cos + b``.

L. Wan, Q. Wang, A. Papir, I. L. Moreno, "Generalized End-to-End Loss for Speaker Verification", ICASSP 2018;
voxceleb_trainer's ``ge2e`` with the scale clamp applied and, as in the paper, no clamp on the cosines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss._common import accuracy, check_input, fp32

INIT_W = 10.0
INIT_B = -5.0
MIN_W = 1e-6


class LossFunction(nn.Module):
    """Rows of the batch are distinct speakers; ``label`` is only checked, the targets are the row indices."""

    test_normalize = True
    min_per_speaker = 2

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(INIT_W))  # checkpoint keys __L__.w, __L__.b (voxceleb_trainer)
        self.b = nn.Parameter(torch.tensor(INIT_B))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker >= 2, nOut), label (B,) -> (loss, % of utterances nearest their own centroid)."""
        check_input(x, label, self.min_per_speaker, "ge2e")
        # Keep the scale positive in the parameter itself; through .data so that autograd's version counter is
        # untouched (a graph from an earlier forward that saved w stays valid).
        self.w.data.clamp_(min=MIN_W)
        with fp32(x):
            x = x.float()
            batch, per_speaker, _ = x.shape
            unit = F.normalize(x, dim=2)  # (B, N, D)
            centroids = x.mean(dim=1)  # (B, D)
            # Centroid of speaker j without utterance i: (N * c_j - x_ji) / (N - 1), shape (B, N, D).
            exclusive = (per_speaker * centroids[:, None, :] - x) / (per_speaker - 1)
            own = (unit * F.normalize(exclusive, dim=2)).sum(dim=2)  # (B, N)
            cos = torch.einsum("jnd,kd->jnk", unit, F.normalize(centroids, dim=1))  # (B, N, B)
            is_own = torch.eye(batch, dtype=torch.bool, device=x.device)[:, None, :]  # (B, 1, B)
            sim = torch.where(is_own, own[:, :, None], cos)  # (B, N, B)
            logits = (self.w * sim + self.b).reshape(batch * per_speaker, batch)
            target = torch.arange(batch, device=x.device).repeat_interleave(per_speaker)  # (B*N,)
            return F.cross_entropy(logits, target), accuracy(logits, target)
