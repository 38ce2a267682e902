"""Per-iteration schedulers whose learning rate is a closed form of the step count (resumable from ``last_epoch``)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def iteration_counts(max_epoch: int, warmup_epochs: float, iters_per_epoch: int, name: str) -> tuple[int, int]:
    """(warm-up iterations, total iterations), with the checks a user can fail."""
    if iters_per_epoch < 1:
        raise ValueError(f"scheduler '{name}' needs iters_per_epoch >= 1, got {iters_per_epoch}")
    if max_epoch < 1:
        raise ValueError(f"scheduler '{name}' needs --max_epoch >= 1, got {max_epoch}")
    if not 0 <= warmup_epochs < max_epoch:
        raise ValueError(f"scheduler '{name}' needs 0 <= --warmup_epochs < --max_epoch ({max_epoch}), "
                         f"got {warmup_epochs}")
    return round(warmup_epochs * iters_per_epoch), max_epoch * iters_per_epoch


def warmup_factor(step: int, warmup_iters: int) -> float:
    """Linear warm-up: (step + 1) / warmup_iters during the first warmup_iters steps (step counts from 0), then 1."""
    return min(1.0, (step + 1) / warmup_iters) if warmup_iters > 0 else 1.0


class ClosedFormScheduler(LRScheduler):
    """Sets every group's lr to ``lr_at(step, base_lr)``, step = number of ``.step()`` calls so far."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, total_iters: int, lr_min: float) -> None:
        for i, group in enumerate(optimizer.param_groups):
            if not 0 <= lr_min <= group["lr"]:
                raise ValueError(f"--lr_min must be between 0 and --lr, got lr_min {lr_min} and lr {group['lr']} "
                                 f"(parameter group {i})")
        self.warmup_iters = warmup_iters
        self.total_iters = total_iters
        self.lr_min = lr_min
        super().__init__(optimizer)

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupCosine(ClosedFormScheduler):
    """Linear warm-up, then half a cosine from base_lr down to lr_min at total_iters; lr_min afterwards."""

    def lr_at(self, step: int, base_lr: float) -> float:
        if step < self.warmup_iters:
            return base_lr * warmup_factor(step, self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / (self.total_iters - self.warmup_iters))
        return self.lr_min + (base_lr - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupExponential(ClosedFormScheduler):
    """base_lr * (lr_min / base_lr) ** (step / total_iters) times the linear warm-up factor; lr_min after
    total_iters."""

    def lr_at(self, step: int, base_lr: float) -> float:
        decay = (self.lr_min / base_lr) ** (min(step, self.total_iters) / self.total_iters)
        return base_lr * decay * warmup_factor(step, self.warmup_iters)
