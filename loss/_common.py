"""Shared helpers of the loss plugins: input checks, fp32 region, accuracy, cosine similarity matrix."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def check_input(x: torch.Tensor, label: torch.Tensor, min_per_speaker: int, name: str) -> None:
    """Raise ValueError unless x is (B, nPerSpeaker >= min_per_speaker, nOut) and label is (B,) integer."""
    if x.dim() != 3:
        raise ValueError(f"loss '{name}' expects embeddings of shape (batch, nPerSpeaker, nOut), got "
                         f"{tuple(x.shape)}")
    if x.size(1) < min_per_speaker:
        raise ValueError(f"loss '{name}' needs nPerSpeaker >= {min_per_speaker}, got {x.size(1)}; "
                         f"set --nPerSpeaker {min_per_speaker} or choose a classification loss such as aamsoftmax")
    if label.dim() != 1 or label.size(0) != x.size(0) or label.is_floating_point():
        raise ValueError(f"loss '{name}' expects integer labels of shape ({x.size(0)},), got {label.dtype} "
                         f"{tuple(label.shape)}")


def fp32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context with autocast disabled on x's device: the loss maths runs in fp32 under --mixedprec."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def flatten_utterances(x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D), (B,) -> (B*N, D) fp32, (B*N,): row b*N+n is utterance n of speaker label[b]."""
    batch, per_speaker, dim = x.shape
    return x.reshape(batch * per_speaker, dim).float(), label.repeat_interleave(per_speaker)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent: logits (N, C), target (N,) -> scalar tensor, no gradient."""
    with torch.no_grad():
        return (logits.argmax(dim=1) == target).float().mean() * 100.0


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of a (M, D) with every row of b (K, D) -> (M, K)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
