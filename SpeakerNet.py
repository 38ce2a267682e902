"""The network in its two modes, as voxceleb_trainer's SpeakerNet.py: ``ModelTrainer`` trains the model with its loss
head, ``Embedder`` embeds waveforms with the model alone, under one ``Precision`` policy."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dtdysv.errors import UserError
from dtdysv.runtime.distributed import DistEnv, all_gather, all_true
from models._dtdy_cpu import fast_cpu_inference


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


@dataclass(frozen=True)
class Precision:
    """--mixedprec for training and embedding: off, a no-op; CUDA fp16 with a gradient scaler or bf16; CPU bf16. The mel
    front-end stays fp32."""

    device: torch.device
    enabled: bool = False
    name: str = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" and self.name == "fp16" else torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.enabled and self.dtype == torch.float16)


class ModelTrainer:
    """Runs epochs of training steps; owns optimizer, scheduler and scaler."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step_per: str, device: torch.device,
                 mixedprec: bool, mixedprec_dtype: str = "fp16", env: DistEnv | None = None,
                 margin: Callable[[float], float] | None = None) -> None:
        if step_per not in ("epoch", "iteration"):
            raise ValueError(f"scheduler must step per 'epoch' or 'iteration', not {step_per!r}")
        self.net = net  # SpeakerNet, or DDP(SpeakerNet)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_per = step_per
        self.device = device
        self.precision = Precision(device, mixedprec, mixedprec_dtype)
        self.env = env or DistEnv()
        self.scaler = self.precision.scaler()
        self.margin = margin  # the loss's margin at a training progress in epochs (a margin schedule's ``at``)

    @property
    def speaker_net(self) -> SpeakerNet:
        return self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net

    def train_network(self, loader: Iterable, epoch: int, steps: int, first_step: int = 0,
                      on_step: Callable[[int, int], None] | None = None,
                      show_progress: bool = True) -> dict[str, float]:
        """One epoch of ``steps`` batches from ``first_step``; ``epoch`` counts from 1. ``on_step(epoch, done)`` runs
        after each step. Returns mean loss, accuracy and utterances/s."""
        self.net.train()
        total_loss = total_acc = 0.0
        count = utts = 0
        start = time.perf_counter()
        bar = tqdm(loader, total=steps, initial=first_step, desc=f"epoch {epoch}",
                   disable=not (show_progress and self.env.is_main), dynamic_ncols=True)
        for step, (data, label) in enumerate(bar, start=first_step):
            if self.margin is not None:
                self.speaker_net.loss.margin = self.margin(epoch - 1 + step / max(steps, 1))
            data = data.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with self.precision.autocast():
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


@dataclass
class Embedder:
    """``model`` (waveform (B, samples) -> (B, nOut)) in eval mode on ``device``, with the DDP rank. With ``fast_cpu`` a
    CPU model embeds through models/_dtdy_cpu.py's folded path (equal to rounding)."""

    model: nn.Module
    device: torch.device
    env: DistEnv = field(default_factory=DistEnv)
    mixedprec: bool = False
    mixedprec_dtype: str = "fp16"
    fast_cpu: bool = False

    def __post_init__(self) -> None:
        self.model.eval()
        self.precision = Precision(self.device, self.mixedprec, self.mixedprec_dtype)

    def _inference(self) -> contextlib.AbstractContextManager:
        """The folded CPU inference path when asked for and the model is on the CPU, else nothing."""
        if self.fast_cpu and self.device.type == "cpu":
            return fast_cpu_inference(self.model)
        return contextlib.nullcontext()

    @torch.no_grad()
    def embed_waves(self, waves: torch.Tensor) -> torch.Tensor:
        """waves (B, samples) -> embeddings (B, nOut) float32 on the CPU, as the model outputs them."""
        with self._inference():
            return self._embed(waves)

    def _embed(self, waves: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self.precision.autocast():
            emb = self.model(waves.to(self.device))
        return emb.float().cpu()

    @torch.no_grad()
    def embed(self, loader: DataLoader, n_files: int, show_progress: bool = True) -> list[torch.Tensor]:
        """(C, nOut) float32 CPU embeddings of a TestDataset loader's files, in file order. Under DDP each rank embeds
        every world_size-th batch and all ranks receive all embeddings."""
        if self.env.enabled:
            batches = list(loader.batch_sampler)[self.env.rank::self.env.world_size]
            loader = DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                                pin_memory=loader.pin_memory)
        out: list[torch.Tensor | None] = [None] * n_files
        local: list[tuple[int, torch.Tensor]] = []
        with self._inference():  # the folded operands are computed once for the whole loop
            for crops, index in tqdm(loader, total=len(loader), desc="embedding",
                                     disable=not (show_progress and self.env.is_main), dynamic_ncols=True):
                batch, n_crops, samples = crops.shape
                emb = self._embed(crops.reshape(batch * n_crops, samples))  # (B * C, nOut)
                local += list(zip(index.tolist(), emb.reshape(batch, n_crops, -1), strict=True))
        for part in all_gather(local, self.env):
            for i, e in part:
                out[i] = e
        return out  # type: ignore[return-value]
