"""Temporal pooling heads: frame-level features (B, D, T) -> utterance-level vector (B, out_dim).

- SAP, self-attentive pooling (Cai, Chen, Li, Odyssey 2018), as in voxceleb_trainer and DTDY-CNN.
- ASP, attentive statistics pooling (Okabe, Koshinaka, Shinoda, Interspeech 2018).
- AVG, mean over time.
- STP, statistics pooling (Snyder et al., x-vectors, ICASSP 2018), population variance.
- ContextASP, channel- and context-dependent ASP (Desplanques et al., "ECAPA-TDNN", Interspeech 2020), for the
  ECAPA-TDNN and CAM++ baselines.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_HIDDEN = 128
STD_FLOOR = 1e-5  # variance floor before the square root


def _attention(in_dim: int) -> nn.Sequential:
    """w = softmax_over_time(Conv1d(128 -> D)(ReLU(BN1d(Conv1d(D -> 128)(x))))), (B, D, T) -> (B, D, T)."""
    return nn.Sequential(nn.Conv1d(in_dim, ATTENTION_HIDDEN, 1), nn.BatchNorm1d(ATTENTION_HIDDEN), nn.ReLU(),
                         nn.Conv1d(ATTENTION_HIDDEN, in_dim, 1), nn.Softmax(dim=2))


def _weighted_std(x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((torch.sum(x * x * w, dim=2) - mu * mu).clamp(min=STD_FLOOR))


class SAP(nn.Module):
    """Self-attentive pooling: (B, D, T) -> (B, D)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim
        self.attention = _attention(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x * self.attention(x), dim=2)


class ASP(nn.Module):
    """Attentive statistics pooling: (B, D, T) -> (B, 2D), [mean; std]."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim
        self.attention = _attention(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.attention(x)
        mu = torch.sum(x * w, dim=2)
        return torch.cat([mu, _weighted_std(x, w, mu)], dim=1)


class AVG(nn.Module):
    """Average pooling over time: (B, D, T) -> (B, D)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


class STP(nn.Module):
    """Statistics pooling: (B, D, T) -> (B, 2D), [mean; std] over time."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mu = torch.var_mean(x, dim=2, correction=0)
        return torch.cat([mu, torch.sqrt(var.clamp(min=STD_FLOOR))], dim=1)


class ContextASP(nn.Module):
    """Channel- (optionally context-) dependent attentive statistics pooling: (B, D, T) -> (B, 2D).

    Attention Conv1d(H -> D)(tanh(Conv1d(D_in -> H)(x_in))), H = 128, softmax over time; ``global_context``: x_in = [x;
    mean_t(x); std_t(x)].
    """

    def __init__(self, in_dim: int, global_context: bool) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim
        self.global_context = global_context
        self.linear1 = nn.Conv1d(3 * in_dim if global_context else in_dim, ATTENTION_HIDDEN, 1)
        self.linear2 = nn.Conv1d(ATTENTION_HIDDEN, in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x
        if self.global_context:
            var, mu = torch.var_mean(x, dim=2, keepdim=True, correction=0)  # (B, D, 1)
            std = torch.sqrt(var.clamp(min=STD_FLOOR))
            x_in = torch.cat([x, mu.expand_as(x), std.expand_as(x)], dim=1)  # (B, 3D, T)
        w = torch.softmax(self.linear2(torch.tanh(self.linear1(x_in))), dim=2)  # (B, D, T)
        mu = torch.sum(x * w, dim=2)
        return torch.cat([mu, _weighted_std(x, w, mu)], dim=1)


POOLINGS: dict[str, type[nn.Module]] = {"SAP": SAP, "ASP": ASP, "AVG": AVG, "STP": STP}


def make_pooling(encoder_type: str, in_dim: int) -> nn.Module:
    """The pooling head named by ``--encoder_type``; its ``out_dim`` attribute is the output size."""
    if encoder_type not in POOLINGS:
        raise ValueError(f"Unknown encoder_type '{encoder_type}' (--encoder_type); valid: "
                         f"{', '.join(POOLINGS)}.")
    return POOLINGS[encoder_type](in_dim)


BASELINE_POOLINGS = ("ASP", "STP", "AVG")  # the encoder types of the ECAPA-TDNN and CAM++ baselines


def make_baseline_pooling(encoder_type: str, in_dim: int, global_context: bool, model: str) -> nn.Module:
    """A 1-D baseline's pooling (ASP, STP or AVG), with ``out_dim``; ``model`` names it in errors."""
    if encoder_type == "ASP":
        return ContextASP(in_dim, global_context)
    if encoder_type == "STP":
        return STP(in_dim)
    if encoder_type == "AVG":
        return AVG(in_dim)
    raise ValueError(f"Unknown encoder_type '{encoder_type}' (--encoder_type) for {model}; valid: "
                     f"{', '.join(BASELINE_POOLINGS)}.")
