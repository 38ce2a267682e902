"""Softmax classification + angular prototypical loss, equal weight: the DTDY-CNN paper's training loss.

J. S. Chung et al., "In defence of metric learning for speaker recognition", Interspeech 2020; used by DTDY-CNN (arXiv
2203.15277). voxceleb_trainer's ``softmaxproto``: its attribute names, so official keys ``__L__.softmax.fc.weight`` and
``__L__.angleproto.w`` load.
"""

from __future__ import annotations

import torch
from torch import nn

from config import DEFAULTS
from loss import angleproto, softmax
from loss._common import check_input


class LossFunction(nn.Module):
    """``softmax(x, label) + angleproto(x)``; the accuracy is the softmax head's speaker accuracy."""

    test_normalize = True
    min_per_speaker = 2

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses) -> None:
        super().__init__()
        self.softmax = softmax.LossFunction(nOut=nOut, nClasses=nClasses)
        self.angleproto = angleproto.LossFunction()

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker >= 2, nOut), label (B,) -> (loss, top-1 speaker accuracy in %)."""
        check_input(x, label, self.min_per_speaker, "softmaxproto")
        loss_s, prec1 = self.softmax(x, label)
        loss_p, _ = self.angleproto(x, label)
        return loss_s + loss_p, prec1
