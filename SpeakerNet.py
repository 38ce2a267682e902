"""The model + loss wrapper and the training loop (no argument parsing, no file formats; embedder.py embeds).

Mixed precision is one code path: ``autocast`` is a no-op and the gradient scaler is disabled when off. On CUDA
``--mixedprec`` trains in fp16 with a gradient scaler (or bf16 with ``--mixedprec_dtype bf16``, no scaler needed);
on CPU in bf16. The models keep their mel front-end in fp32 whatever the autocast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from config import UserError
from distributed import DistEnv, all_true


class NonFiniteLossError(UserError):
    pass


class SpeakerNet(nn.Module):
    """Embedding network ``model`` and training head ``loss`` as one module (what DDP wraps)."""

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """data (B, nPerSpeaker, samples), label (B,) -> (loss, top-1 accuracy in %)."""
        batch, per_speaker, samples = data.shape
        emb = self.model(data.reshape(batch * per_speaker, samples))  # (B * nPerSpeaker, nOut)
        return self.loss(emb.reshape(batch, per_speaker, -1).float(), label)


def autocast_dtype(device: torch.device, name: str) -> torch.dtype:
    """fp16 or bf16 on CUDA as asked; always bf16 on CPU (CPU fp16 autocast is slow and partial)."""
    return torch.float16 if device.type == "cuda" and name == "fp16" else torch.bfloat16


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


class ModelTrainer:
    """Runs epochs of training steps; owns optimizer, scheduler and scaler."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step_per: str, device: torch.device,
                 mixedprec: bool, mixedprec_dtype: str = "fp16", env: DistEnv | None = None,
                 on_iteration: Callable[[float], None] | None = None) -> None:
        if step_per not in ("epoch", "iteration"):
            raise ValueError(f"scheduler must step per 'epoch' or 'iteration', not {step_per!r}")
        self.net = net  # SpeakerNet, or DDP(SpeakerNet)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_per = step_per
        self.device = device
        self.mixedprec = mixedprec
        self.dtype = autocast_dtype(device, mixedprec_dtype)
        self.env = env or DistEnv()
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixedprec and self.dtype == torch.float16)
        self.on_iteration = on_iteration

    @property
    def speaker_net(self) -> SpeakerNet:
        return self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net

    def train_network(self, loader: Iterable, epoch: int, steps: int, first_step: int = 0,
                      on_step: Callable[[int, int], None] | None = None,
                      show_progress: bool = True) -> dict[str, float]:
        """One epoch (from batch ``first_step`` when resuming inside it) of ``steps`` batches; ``epoch`` counts from 1.

        ``on_step(epoch, done)`` is called after each step with the number of batches of the epoch done. Returns
        mean loss, accuracy and utterances/s of the steps run.
        """
        self.net.train()
        total_loss = total_acc = 0.0
        count = utts = 0
        start = time.perf_counter()
        bar = tqdm(loader, total=steps, initial=first_step, desc=f"epoch {epoch}",
                   disable=not (show_progress and self.env.is_main), dynamic_ncols=True)
        for step, (data, label) in enumerate(bar, start=first_step):
            if self.on_iteration is not None:
                self.on_iteration(epoch - 1 + step / max(steps, 1))
            data = data.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with autocast(self.device, self.mixedprec, self.dtype):
                loss, acc = self.net(data, label)
            if not all_true(bool(torch.isfinite(loss)), self.env, self.device):  # every rank stops together
                raise NonFiniteLossError(f"The loss became non-finite ({loss.item()} on rank {self.env.rank}) at "
                                         f"epoch {epoch}, step {step + 1}; training stopped. The last good "
                                         f"checkpoint is kept; try a lower --lr or no --mixedprec.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.step_per == "iteration":
                self.scheduler.step()
            total_loss += loss.item()
            total_acc += float(acc)
            count += 1
            utts += data.shape[0] * data.shape[1]
            rate = utts / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{total_loss / count:.3f}", acc=f"{total_acc / count:.1f}", utt_s=f"{rate:.1f}")
            if on_step is not None:
                on_step(epoch, step + 1)
        if self.step_per == "epoch":
            self.scheduler.step()
        count = max(count, 1)
        return {"loss": total_loss / count, "acc": total_acc / count,
                "utt_per_s": utts * self.env.world_size / (time.perf_counter() - start)}
