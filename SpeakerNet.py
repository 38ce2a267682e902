"""The network in its two modes, as voxceleb_trainer's SpeakerNet.py: ``ModelTrainer`` trains the model with its loss
head, ``Embedder`` embeds waveforms with the model alone, under one ``Precision`` policy."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dtdysv.errors import UserError
from dtdysv.runtime.distributed import DistEnv, all_gather, all_true
from models._dtdy_cpu import fast_cpu_inference

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


@dataclass(frozen=True)
class Precision:
    """--mixedprec for training and embedding: off, a no-op. On CUDA ``name`` auto is bf16 where the GPU computes it
    natively (Ampere and later), else fp16 with a gradient scaler; bf16 or fp16 as asked. On CPU always bf16 (CPU fp16
    autocast is slow and partial). The mel front-end stays fp32."""

    device: torch.device
    enabled: bool = False
    name: str = "auto"

    def __post_init__(self) -> None:
        if self.name not in ("auto", "bf16", "fp16"):
            raise UserError(f"--mixedprec_dtype must be auto, bf16 or fp16, got {self.name!r}.")

    @property
    def dtype(self) -> torch.dtype:
        if self.device.type != "cuda" or self.name == "bf16":
            return torch.bfloat16
        if self.name == "auto" and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.enabled and self.dtype == torch.float16)


class ModelTrainer:
    """Runs epochs of training steps; owns optimizer, scheduler and scaler.

    A step never waits for the device: loss and accuracy are summed on the device, and read back, with the
    steps' non-finite flags, in one transfer every ``log_interval`` steps and at the end of the epoch. The
    learning-rate schedule and the margin ramp are functions of the step count, computed on the host.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, step_per: str, device: torch.device,
                 mixedprec: bool, mixedprec_dtype: str = "auto", env: DistEnv | None = None,
                 margin: Callable[[float], float] | None = None, log_interval: int = 20,
                 on_read: Callable[[int, float, float], None] | None = None) -> None:
        if step_per not in ("epoch", "iteration"):
            raise ValueError(f"scheduler must step per 'epoch' or 'iteration', not {step_per!r}")
        if log_interval < 1:
            raise UserError(f"--log_interval must be at least 1 step, got {log_interval}.")
        self.net = net  # SpeakerNet, or DDP(SpeakerNet)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.step_per = step_per
        self.device = device
        self.precision = Precision(device, mixedprec, mixedprec_dtype)
        self.env = env or DistEnv()
        self.scaler = self.precision.scaler()
        self.margin = margin  # the loss's margin after a training progress in epochs (a margin schedule's ``at``)
        self.log_interval = log_interval
        self.on_read = on_read  # (global step, mean loss, mean accuracy of the steps read), at every read
        # Fused optimizers take a found_inf flag and skip a step on the device, as GradScaler uses them.
        self.skips_on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        if not self.skips_on_device:
            log.info("%s has no fused step: each training step waits for the device to check its gradients",
                     type(optimizer).__name__)
        self._unread: list[tuple[torch.Tensor, torch.Tensor]] = []  # (non-finite, skipped) of unread steps

    @property
    def speaker_net(self) -> SpeakerNet:
        return self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net

    def _nonfinite_gradients(self) -> torch.Tensor:
        """1.0 (float32, on the device) when any gradient holds a NaN or an infinity, else 0.0: GradScaler's check
        at a scale of 1, which leaves the gradients as they are."""
        found = torch.zeros((), device=self.device)
        one = torch.ones((), device=self.device)
        grads: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    grads[param.grad.device, param.grad.dtype].append(param.grad)
        for same_kind in grads.values():
            torch._amp_foreach_non_finite_check_and_unscale_(same_kind, found, one)
        return found

    def _step(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backward pass and optimizer step of ``loss``; (non-finite, skipped by the fp16 scaler) as device booleans.

        The step is skipped on the device when the loss on any rank, or a gradient, is non-finite.
        """
        finite = torch.isfinite(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        scaled = self.scaler.scale(loss)
        # A non-finite loss seeds the backward pass with NaN, so that every gradient it reaches is non-finite, here
        # and, once DDP has averaged them, on every rank: the gradient check below then skips the step everywhere.
        scaled.backward(torch.ones_like(scaled).masked_fill_(~finite, float("nan")))
        if self.scaler.is_enabled():
            scale = self.scaler._get_scale_async().clone()  # type: ignore[union-attr]  # the scale, on the device
            self.scaler.step(self.optimizer)  # skipped on a non-finite gradient, a normal fp16 overflow included
            self.scaler.update()
            return ~finite, self.scaler._get_scale_async() < scale  # the scale backs off after a skipped step
        found_inf = self._nonfinite_gradients()
        if self.skips_on_device:
            self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]  # read by the fused step
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif not found_inf.item():  # a host sync: only a fused step can skip on the device
            self.optimizer.step()
        return ~finite | (found_inf > 0), torch.zeros((), dtype=torch.bool, device=self.device)

    def steps_so_far_finite(self) -> bool:
        """Whether the unread steps of this epoch had a finite loss and gradients on this rank: one host sync and no
        collective, so that one rank may ask (before writing a checkpoint inside an epoch)."""
        return not self._unread or not bool(torch.stack([flag for flag, _ in self._unread]).any())

    def _read(self, sums: torch.Tensor, epoch: int, first: int) -> tuple[float, float, list[int]]:
        """The loss and accuracy sums of the unread steps (``first`` is the first's index) and the steps the scaler
        skipped (1-based), in one device-to-host transfer; raises NonFiniteLossError on every rank together when
        any rank had a non-finite step among them."""
        flags = torch.stack([torch.stack(pair) for pair in self._unread]).float()  # (steps, 2)
        values = torch.cat([sums, flags.flatten()]).tolist()  # the one host sync of the interval
        self._unread.clear()
        nonfinite, skipped = values[2::2], values[3::2]
        if not all_true(not any(nonfinite), self.env, self.device):  # every rank stops together
            where = (f"step {first + nonfinite.index(1.0) + 1} on rank {self.env.rank}" if any(nonfinite)
                     else f"one of steps {first + 1}-{first + len(nonfinite)} on another rank")
            raise NonFiniteLossError(f"The loss or its gradient became non-finite at epoch {epoch}, {where}; "
                                     f"training stopped, the non-finite steps changed no weight. The last good "
                                     f"checkpoint is kept; try a lower --lr or no --mixedprec.")
        return values[0], values[1], [first + i + 1 for i, s in enumerate(skipped) if s]

    def train_network(self, loader: Iterable, epoch: int, steps: int, first_step: int = 0,
                      on_step: Callable[[int, int], None] | None = None,
                      show_progress: bool = True, label: str = "") -> dict[str, float]:
        """One epoch (from batch ``first_step`` when resuming inside it) of ``steps`` batches; ``epoch`` counts from 1;
        ``label`` names it on the progress bar (default 'epoch N').

        ``on_step(epoch, done)`` is called after each step with the number of batches of the epoch done. Returns
        mean loss, accuracy and utterances/s of the steps run, and the number of steps the fp16 scaler skipped.

        Non-finite steps: a step whose loss (on any rank) or gradient is non-finite changes no weight and no
        optimizer state (the step is skipped on the device), and training stops with NonFiniteLossError on every
        rank at the next read, at most ``log_interval`` steps later. The forward passes of those steps may have
        updated BatchNorm running statistics, so no checkpoint may be written from them: the caller writes one
        only after this method returns, or inside the epoch after :meth:`steps_so_far_finite`. With fp16 the
        scaler's skipped steps (overflows) are normal, and a non-finite loss stops training as in bf16 and fp32.
        """
        self.net.train()
        self._unread.clear()
        sums = torch.zeros(2, device=self.device)  # loss, accuracy of the unread steps
        total_loss = total_acc = 0.0
        count = utts = 0
        skipped: list[int] = []
        first_unread = first_step
        start = time.perf_counter()
        bar = tqdm(loader, total=steps, initial=first_step, desc=label or f"epoch {epoch}",
                   disable=not (show_progress and self.env.is_main), dynamic_ncols=True)
        for step, (data, label) in enumerate(bar, start=first_step):
            if self.margin is not None:
                self.speaker_net.loss.margin = self.margin(epoch - 1 + step / max(steps, 1))
            data = data.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with self.precision.autocast():
                loss, acc = self.net(data, label)
            self._unread.append(self._step(loss))
            if self.step_per == "iteration":
                self.scheduler.step()
            sums[0] += loss.detach().float()
            sums[1] += acc.detach().float() if isinstance(acc, torch.Tensor) else acc
            count += 1
            utts += data.shape[0] * data.shape[1]
            if len(self._unread) == self.log_interval:
                read = step + 1 - first_unread
                loss_sum, acc_sum, skips = self._read(sums, epoch, first_unread)
                sums.zero_()
                total_loss, total_acc, first_unread = total_loss + loss_sum, total_acc + acc_sum, step + 1
                if self.on_read is not None:
                    self.on_read((epoch - 1) * steps + step + 1, loss_sum / read, acc_sum / read)
                skipped += skips
                rate = utts / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{total_loss / count:.3f}", acc=f"{total_acc / count:.1f}", utt_s=f"{rate:.1f}")
            if on_step is not None:
                on_step(epoch, step + 1)
        if self._unread:
            loss_sum, acc_sum, skips = self._read(sums, epoch, first_unread)
            total_loss, total_acc = total_loss + loss_sum, total_acc + acc_sum
            skipped += skips
        if self.step_per == "epoch":
            self.scheduler.step()
        if self.scaler.is_enabled():
            log.info("epoch %d: the fp16 gradient scaler skipped %d of %d steps%s; scale %g", epoch, len(skipped),
                     count, f" (steps {', '.join(map(str, skipped))})" if skipped else "", self.scaler.get_scale())
        count = max(count, 1)
        return {"loss": total_loss / count, "acc": total_acc / count,
                "utt_per_s": utts * self.env.world_size / (time.perf_counter() - start),
                "skipped_steps": float(len(skipped))}


@dataclass
class Embedder:
    """``model`` (waveform (B, samples) -> (B, nOut)) in eval mode on ``device``, with the DDP rank. With ``fast_cpu`` a
    CPU model embeds through models/_dtdy_cpu.py's folded path (equal to rounding)."""

    model: nn.Module
    device: torch.device
    env: DistEnv = field(default_factory=DistEnv)
    mixedprec: bool = False
    mixedprec_dtype: str = "auto"
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
