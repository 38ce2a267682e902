"""Margin maths shared by the margin losses: the additive angular margin and the margin schedule.

Additive angular margin (ArcFace): J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace: Additive Angular Margin Loss
for Deep Face Recognition", CVPR 2019. Margin schedule: WeSpeaker's exponential margin increase
(H. Wang et al., "WeSpeaker: A Research and Production Oriented Speaker Embedding Learning Toolkit",
ICASSP 2023).
"""

from __future__ import annotations

import math

import torch

# Fraction of the margin still missing at the start of the ramp (WeSpeaker's final_val = 1e-3).
RAMP_FLOOR = 1e-3


def margin_at(epoch: float, final: float, start: float, end: float) -> float:
    """Margin at training progress ``epoch`` (completed epochs, 0.0 at the start of training, 1.5 halfway through
    the second epoch) for a ramp from 0 at ``start`` to ``final`` at ``end``.

    ``start == end == 0`` means no schedule (always ``final``). Otherwise the margin is 0 up to ``start``,
    ``final`` from ``end`` on, and in between rises exponentially as in WeSpeaker, normalised to be continuous:
    ``final * (1 - 1e-3 ** p) / (1 - 1e-3)`` with ``p = (epoch - start) / (end - start)``; most of the rise
    happens early (half the margin at p = 0.1).
    """
    if start < 0 or end < start:
        raise ValueError(f"margin schedule needs 0 <= margin_rampup_start <= margin_rampup_end, got start {start}, "
                         f"end {end} (0/0 disables the schedule)")
    if start == 0 and end == 0:
        return final
    if epoch >= end:
        return final
    if epoch <= start:
        return 0.0
    progress = (epoch - start) / (end - start)
    return final * (1.0 - RAMP_FLOOR**progress) / (1.0 - RAMP_FLOOR)


def additive_angular_margin(cosine: torch.Tensor, label: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """ArcFace logits: cosine (N, C), label (N,) -> (N, C) with ``scale * cos(theta + margin)`` at the target class
    and ``scale * cos(theta)`` elsewhere.

    The usual easy_margin=False form: where ``theta + margin`` would pass pi (``cos theta <= cos(pi - m)``) the
    target logit is ``cos theta - m sin(m)`` instead, which keeps it monotonic in theta. Call in fp32.
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    target = cosine.gather(1, label[:, None])  # (N, 1)
    # Clamped away from 0 so the gradient of sqrt stays finite at cos = +-1 (the clamp only cuts the sine path).
    sine = torch.sqrt((1.0 - target * target).clamp(min=1e-7, max=1.0))
    phi = target * cos_m - sine * sin_m  # cos(theta + m)
    phi = torch.where(target > th, phi, target - mm)
    return scale * cosine.scatter(1, label[:, None], phi)
