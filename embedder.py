"""The embedder: an embedding model in eval mode on its device, with the process's place in a DDP job and the
mixed-precision setting; what evaluation, extraction and the activation maps run (no optimizer, no loss head).

    embedder = Embedder(model, torch.device("cpu"))
    vectors = embedder.embed_waves(waves)              # (B, samples) -> (B, nOut)
    crops = embedder.embed(loader, n_files)            # a TestDataset loader -> [(crops, nOut)] * n_files

With ``fast_cpu`` (``--fast_cpu_inference``, the default) a model on the CPU embeds through the folded inference
path of models/_dtdy_cpu.py, which equals the readable model to rounding; on other devices it does nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from distributed import DistEnv, all_gather
from models._dtdy_cpu import fast_cpu_inference
from SpeakerNet import autocast, autocast_dtype


@dataclass
class Embedder:
    """``model`` (waveform (B, samples) -> embedding (B, nOut)) on ``device``; put in eval mode on creation."""

    model: nn.Module
    device: torch.device
    env: DistEnv = field(default_factory=DistEnv)
    mixedprec: bool = False
    mixedprec_dtype: str = "fp16"
    fast_cpu: bool = False

    def __post_init__(self) -> None:
        self.model.eval()
        self.dtype = autocast_dtype(self.device, self.mixedprec_dtype)

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
        with autocast(self.device, self.mixedprec, self.dtype):
            emb = self.model(waves.to(self.device))
        return emb.float().cpu()

    @torch.no_grad()
    def embed(self, loader: DataLoader, n_files: int, show_progress: bool = True) -> list[torch.Tensor]:
        """Embeddings of every file of a TestDataset loader (batches of (crops (B, C, samples), index (B,))):
        a list of (C, nOut) float32 CPU tensors in file order.

        Under DDP each rank embeds every world_size-th batch and every rank receives all embeddings.
        """
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
