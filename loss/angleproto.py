"""Angular prototypical loss: each speaker's first utterance is classified among the batch's prototypes (mean of the
other utterances) by ``w * cos + b``, learnable w > 0 and b.

J. S. Chung et al., "In defence of metric learning for speaker recognition", Interspeech 2020; voxceleb_trainer's
``angleproto``, with its scale clamp applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loss._common import accuracy, check_input, cosine_matrix, fp32

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
        """x (B, nPerSpeaker >= 2, nOut), label (B,) -> (loss, % of first utterances nearest their own prototype)."""
        check_input(x, label, self.min_per_speaker, "angleproto")
        # Keep the scale positive in the parameter itself; through .data so that autograd's version counter is
        # untouched (a graph from an earlier forward that saved w stays valid).
        self.w.data.clamp_(min=MIN_W)
        with fp32(x):
            x = x.float()
            positive = x[:, 0, :]  # (B, nOut)
            anchor = x[:, 1:, :].mean(dim=1)  # (B, nOut) prototype of each speaker
            logits = self.w * cosine_matrix(positive, anchor) + self.b  # (B, B)
            target = torch.arange(x.size(0), device=x.device)
            return F.cross_entropy(logits, target), accuracy(logits, target)
