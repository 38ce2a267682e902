"""Cosine annealing with linear warm-up, stepped per iteration.

I. Loshchilov, F. Hutter, "SGDR", ICLR 2017 (one cycle); warm-up as P. Goyal et al., "Accurate, Large Minibatch SGD",
2017. With W = round(warmup_epochs * iters_per_epoch), T = max_epoch * iters_per_epoch, iteration i: ``lr * (i + 1) /
W`` for i < W, then ``lr_min + (lr - lr_min) * (1 + cos(pi * (i - W) / (T - W))) / 2``, lr_min from T on.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

from scheduler._closed_form import WarmupCosine, iteration_counts


def Scheduler(optimizer: torch.optim.Optimizer, max_epoch: int, warmup_epochs: float, lr_min: float,
              iters_per_epoch: int) -> tuple[LRScheduler, str]:
    """Warm-up + cosine decay to lr_min over max_epoch epochs, stepped per iteration."""
    warmup_iters, total_iters = iteration_counts(max_epoch, warmup_epochs, iters_per_epoch, "cosine")
    return WarmupCosine(optimizer, warmup_iters=warmup_iters, total_iters=total_iters, lr_min=lr_min), "iteration"
