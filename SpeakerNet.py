"""The model + loss wrapper and the training and embedding loops (no argument parsing, no file formats).

Mixed precision is one code path: ``autocast`` is a no-op and the gradient scaler is disabled when off. On CUDA
``--mixedprec`` trains in fp16 with a scaler; on CPU in bf16 (no scaler needed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from config import UserError

log = logging.getLogger(__name__)


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


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


class ModelTrainer:
    """Runs epochs of training steps and embeds test files; owns optimizer, scheduler and scaler."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer | None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, step_per: str, device: torch.device,
                 mixedprec: bool,
                 on_iteration: Callable[[float], None] | None = None) -> None:
        if step_per not in ("epoch", "iteration"):
            raise ValueError(f"scheduler must step per 'epoch' or 'iteration', not {step_per!r}")
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_per = step_per
        self.device = device
        self.mixedprec = mixedprec
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixedprec and device.type == "cuda")
        self.on_iteration = on_iteration

    def train_network(self, loader: Iterable, epoch: int, steps: int, show_progress: bool = True) -> dict[str, float]:
        """One epoch; returns mean loss, accuracy and utterances/s. ``epoch`` counts from 1."""
        self.net.train()
        total_loss = total_acc = 0.0
        count = utts = 0
        start = time.perf_counter()
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch}", disable=not show_progress, dynamic_ncols=True)
        for step, (data, label) in enumerate(bar):
            if self.on_iteration is not None:
                self.on_iteration(epoch - 1 + step / max(steps, 1))
            data = data.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with autocast(self.device, self.mixedprec):
                loss, acc = self.net(data, label)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"The loss became {loss.item()} at epoch {epoch}, step {step + 1}; training "
                                         f"stopped. The last good checkpoint is kept; try a lower --lr or no "
                                         f"--mixedprec.")
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
        if self.step_per == "epoch":
            self.scheduler.step()
        if count == 0:
            raise UserError("The epoch had no batch: the train list has too few utterances per speaker for "
                            "--nPerSpeaker and --batch_size.")
        return {"loss": total_loss / count, "acc": total_acc / count,
                "utt_per_s": utts / (time.perf_counter() - start)}

    @torch.no_grad()
    def embed(self, loader: Iterable, n_files: int, show_progress: bool = True) -> list[torch.Tensor]:
        """Embeddings of every file of a TestDataset loader: list of (crops, nOut) float32 CPU tensors."""
        model = self.net.model
        model.eval()
        out: list[torch.Tensor | None] = [None] * n_files
        for crops, index in tqdm(loader, total=len(loader), desc="embedding", disable=not show_progress,
                                 dynamic_ncols=True):
            batch, n_crops, samples = crops.shape
            with autocast(self.device, self.mixedprec):
                emb = model(crops.reshape(batch * n_crops, samples).to(self.device))
            emb = emb.float().reshape(batch, n_crops, -1).cpu()
            for i, e in zip(index.tolist(), emb, strict=True):
                out[i] = e
        return out  # type: ignore[return-value]
