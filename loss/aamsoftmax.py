"""Additive angular margin softmax (AAM-softmax / ArcFace): cross-entropy on ``scale * cos(theta + margin)``.

J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019;
voxceleb_trainer's ``aamsoftmax`` (easy_margin=False).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import DEFAULTS
from loss._common import accuracy, check_input, flatten_utterances, fp32
from loss._margin import additive_angular_margin


class LossFunction(nn.Module):
    """Cosine classifier with an additive angular margin on the target class, computed in fp32."""

    test_normalize = True
    min_per_speaker = 1

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses, margin: float = DEFAULTS.margin,
                 scale: float = DEFAULTS.scale) -> None:
        super().__init__()
        if margin < 0 or scale <= 0:
            raise ValueError(f"aamsoftmax needs --margin >= 0 and --scale > 0, got margin {margin}, scale {scale}")
        self.margin = float(margin)
        self.scale = float(scale)
        # voxceleb_trainer's name and layout: weight (nClasses, nOut), checkpoint key __L__.weight
        self.weight = nn.Parameter(torch.empty(nClasses, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker, nOut), label (B,) -> (loss, top-1 speaker accuracy in % from the cosines)."""
        check_input(x, label, self.min_per_speaker, "aamsoftmax")
        with fp32(x):
            emb, target = flatten_utterances(x, label)  # (B*N, nOut), (B*N,)
            cosine = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight.float(), dim=1))  # (B*N, nClasses)
            logits = additive_angular_margin(cosine, target, self.margin, self.scale)
            return F.cross_entropy(logits, target), accuracy(cosine, target)
