"""The additive angular margin of the margin losses (J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace", CVPR 2019)."""

from __future__ import annotations

import math

import torch


def additive_angular_margin(cosine: torch.Tensor, label: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """ArcFace logits, cosine (N, C), label (N,) -> (N, C): ``scale * cos(theta + margin)`` at the target, ``scale *
    cos(theta)`` elsewhere; past pi the target is ``cos theta - m sin(m)`` (easy_margin=False). Call in fp32."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    target = cosine.gather(1, label[:, None])  # (N, 1)
    # Clamped away from 0 so the gradient of sqrt stays finite at cos = +-1 (the clamp only cuts the sine path).
    sine = torch.sqrt((1.0 - target * target).clamp(min=1e-7, max=1.0))
    phi = target * cos_m - sine * sin_m  # cos(theta + m)
    phi = torch.where(target > th, phi, target - mm)
    return scale * cosine.scatter(1, label[:, None], phi)
