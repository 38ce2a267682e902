"""Softmax classification head: a linear layer over the speakers and cross-entropy.

The plain softmax baseline of J. S. Chung et al., "In defence of metric learning for speaker recognition",
Interspeech 2020 (voxceleb_trainer's ``softmax``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import DEFAULTS
from loss._common import accuracy, check_input, flatten_utterances, fp32


class LossFunction(nn.Module):
    """Linear (nOut -> nClasses, with bias) + cross-entropy over every utterance."""

    test_normalize = True
    min_per_speaker = 1

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses) -> None:
        super().__init__()
        self.fc = nn.Linear(nOut, nClasses)  # voxceleb_trainer's name: checkpoint key __L__.fc.weight

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker, nOut), label (B,) -> (loss, top-1 speaker accuracy in %)."""
        check_input(x, label, self.min_per_speaker, "softmax")
        with fp32(x):
            emb, target = flatten_utterances(x, label)  # (B*N, nOut), (B*N,)
            logits = self.fc(emb)  # (B*N, nClasses)
            return F.cross_entropy(logits, target), accuracy(logits, target)
