"""Step decay, once per epoch: ``lr(e) = lr * lr_decay ** floor(e / decay_interval)``.

voxceleb_trainer's ``steplr`` (DTDY recipe: x0.75 every 15 epochs) with its own interval option.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler, StepLR


def Scheduler(optimizer: torch.optim.Optimizer, lr_decay: float, decay_interval: int,
              iters_per_epoch: int) -> tuple[LRScheduler, str]:
    """StepLR(step_size=decay_interval, gamma=lr_decay), stepped per epoch (``iters_per_epoch`` is unused)."""
    if not 0 < lr_decay <= 1:
        raise ValueError(f"--lr_decay must be in (0, 1], got {lr_decay}")
    if decay_interval < 1:
        raise ValueError(f"--decay_interval must be >= 1 epoch, got {decay_interval}")
    return StepLR(optimizer, step_size=decay_interval, gamma=lr_decay), "epoch"
