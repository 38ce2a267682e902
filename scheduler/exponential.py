"""Exponential decay from lr to lr_min over max_epoch epochs with linear warm-up, per iteration.

WeSpeaker's ``ExponentialDecrease`` (H. Wang et al., ICASSP 2023). With W, T as in cosine.py: ``lr(i) = lr * (lr_min /
lr) ** (min(i, T) / T) * min(1, (i + 1) / W)``.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

from scheduler._closed_form import WarmupExponential, iteration_counts


def Scheduler(optimizer: torch.optim.Optimizer, max_epoch: int, warmup_epochs: float, lr_min: float,
              iters_per_epoch: int) -> tuple[LRScheduler, str]:
    """Warm-up + exponential decay to lr_min over max_epoch epochs, stepped per iteration."""
    if lr_min <= 0:
        raise ValueError(f"scheduler 'exponential' decays towards --lr_min and needs lr_min > 0, got {lr_min} "
                         f"(WeSpeaker uses e.g. --lr 0.1 --lr_min 5e-5)")
    warmup_iters, total_iters = iteration_counts(max_epoch, warmup_epochs, iters_per_epoch, "exponential")
    return WarmupExponential(optimizer, warmup_iters=warmup_iters, total_iters=total_iters, lr_min=lr_min), "iteration"
