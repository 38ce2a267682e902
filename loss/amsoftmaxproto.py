"""AM-softmax classification + angular prototypical loss, equal weight.

F. Wang et al., IEEE SPL 2018, with the angular prototypical loss of J. S. Chung et al., "In defence of metric learning
for speaker recognition", Interspeech 2020; voxceleb_trainer's ``amsoftmaxproto`` (same attribute names).
"""

from __future__ import annotations

import torch
from torch import nn

from config import DEFAULTS
from loss import amsoftmax, angleproto
from loss._common import check_input


class LossFunction(nn.Module):
    """``amsoftmax(x, label) + angleproto(x)``; the accuracy is the AM-softmax head's speaker accuracy."""

    test_normalize = True
    min_per_speaker = 2

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses, margin: float = DEFAULTS.margin,
                 scale: float = DEFAULTS.scale) -> None:
        super().__init__()
        self.amsoftmax = amsoftmax.LossFunction(nOut=nOut, nClasses=nClasses, margin=margin, scale=scale)
        self.angleproto = angleproto.LossFunction()

    @property
    def margin(self) -> float:
        """The AM-softmax margin (the trainer's margin schedule writes it here)."""
        return self.amsoftmax.margin

    @margin.setter
    def margin(self, value: float) -> None:
        self.amsoftmax.margin = float(value)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker >= 2, nOut), label (B,) -> (loss, top-1 speaker accuracy in %)."""
        check_input(x, label, self.min_per_speaker, "amsoftmaxproto")
        loss_s, prec1 = self.amsoftmax(x, label)
        loss_p, _ = self.angleproto(x, label)
        return loss_s + loss_p, prec1
