"""Additive margin softmax (AM-softmax / CosFace): cross-entropy on ``scale * (cos theta - margin * onehot)``.

F. Wang, J. Cheng, W. Liu, H. Liu, "Additive Margin Softmax for Face Verification", IEEE SPL 2018; voxceleb_trainer's
``amsoftmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import DEFAULTS
from loss._common import accuracy, check_input, flatten_utterances, fp32


class LossFunction(nn.Module):
    """Cosine classifier with an additive cosine margin on the target class."""

    test_normalize = True
    min_per_speaker = 1

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses, margin: float = DEFAULTS.margin,
                 scale: float = DEFAULTS.scale) -> None:
        super().__init__()
        if margin < 0 or scale <= 0:
            raise ValueError(f"amsoftmax needs --margin >= 0 and --scale > 0, got margin {margin}, scale {scale}")
        self.margin = float(margin)
        self.scale = float(scale)
        # voxceleb_trainer's name and layout: W (nOut, nClasses), checkpoint key __L__.W
        self.W = nn.Parameter(torch.empty(nOut, nClasses))
        nn.init.xavier_normal_(self.W, gain=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker, nOut), label (B,) -> (loss, top-1 speaker accuracy in % from the cosines)."""
        check_input(x, label, self.min_per_speaker, "amsoftmax")
        with fp32(x):
            emb, target = flatten_utterances(x, label)  # (B*N, nOut), (B*N,)
            cosine = F.normalize(emb, dim=1) @ F.normalize(self.W.float(), dim=0)  # (B*N, nClasses)
            margins = torch.zeros_like(cosine).scatter_(1, target[:, None], self.margin)
            loss = F.cross_entropy(self.scale * (cosine - margins), target)
            return loss, accuracy(cosine, target)
