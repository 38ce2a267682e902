"""Sub-center AAM-softmax: ArcFace with K centres per speaker, the cosine to a speaker is its best centre's.

J. Deng, J. Guo, T. Liu, M. Gong, S. Zafeiriou, "Sub-center ArcFace: Boosting Face Recognition by Large-Scale
Noisy Web Faces", ECCV 2020; used for speakers in WeSpeaker (``ArcMarginProduct_subcenter``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import DEFAULTS
from loss._common import accuracy, check_input, flatten_utterances, fp32
from loss._margin import additive_angular_margin


class LossFunction(nn.Module):
    """AAM-softmax over ``subcenters`` centres per class; ``weight`` row ``c * subcenters + k`` is centre k of class
    c."""

    test_normalize = True
    min_per_speaker = 1

    def __init__(self, nOut: int = DEFAULTS.nOut, nClasses: int = DEFAULTS.nClasses, margin: float = DEFAULTS.margin,
                 scale: float = DEFAULTS.scale, subcenters: int = DEFAULTS.subcenters) -> None:
        super().__init__()
        if margin < 0 or scale <= 0:
            raise ValueError(f"aamsoftmax_subcenter needs --margin >= 0 and --scale > 0, got margin {margin}, "
                             f"scale {scale}")
        if subcenters < 1:
            raise ValueError(f"aamsoftmax_subcenter needs --subcenters >= 1, got {subcenters}")
        self.margin = float(margin)
        self.scale = float(scale)
        self.subcenters = int(subcenters)
        self.weight = nn.Parameter(torch.empty(nClasses * subcenters, nOut))
        nn.init.xavier_normal_(self.weight, gain=1)

    def class_cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (M, nOut) -> (M, nClasses): cosine to the closest of each class's centres."""
        cosine = F.linear(F.normalize(emb, dim=1), F.normalize(self.weight.float(), dim=1))  # (M, nClasses*K)
        return cosine.reshape(emb.size(0), -1, self.subcenters).amax(dim=2)  # (M, nClasses)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, nPerSpeaker, nOut), label (B,) -> (loss, top-1 speaker accuracy in % from the cosines)."""
        check_input(x, label, self.min_per_speaker, "aamsoftmax_subcenter")
        with fp32(x):
            emb, target = flatten_utterances(x, label)  # (B*N, nOut), (B*N,)
            cosine = self.class_cosine(emb)
            logits = additive_angular_margin(cosine, target, self.margin, self.scale)
            return F.cross_entropy(logits, target), accuracy(cosine, target)
