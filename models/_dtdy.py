"""Decomposed Temporal Dynamic convolution (DTDY).

S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network for Text-Independent
Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277 (2022).

The kernel of output time bin t is W(t) = W0 + P Phi(t) Q^T (paper, Eq. 3), Phi(t) from the input's frequency- and
channel-mean statistics (Eq. 4-5). As the official code computes it:

    r = conv_kxk(x; W0)                  static path                       (B, C_out, T', F')
    z = BN_a(conv_kxk(x; Q))             latent path                       (B, L, T', F')
    m = Phi(t) z   for every (b, t, f)   per-time-bin mixing               (B, L, T', F')
    y = r + P (BN_b(m) + z)              1 x 1 projection                  (B, C_out, T', F')

Tensors are time-major ``(B, C, T, F)``, kernels (time, frequency); official checkpoints are frequency-major
(models/_official.py).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def latent_size(in_channels: int, out_channels: int) -> int:
    """L = floor(sqrt(2 C_in + 2 C_out)), e.g. 32->32: 11, 64->64: 16, 256->256: 32."""
    return math.isqrt(2 * in_channels + 2 * out_channels)


def phi_hidden_size(latent: int) -> int:
    """H = floor(L^2 / 8), the width of the Phi branch."""
    return latent * latent // 8


def hard_sigmoid2(v: torch.Tensor) -> torch.Tensor:
    """clamp(v + 3, 0, 6) / 3, a hard sigmoid with range [0, 2]."""
    return 2.0 * F.hardsigmoid(v)


class PhiBranch(nn.Module):
    """Phi(t) from the layer input: x (B, C_in, T, F) -> phi (B, T', L, L), values in [0, 2]."""

    def __init__(self, in_channels: int, freq_size: int, latent: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = phi_hidden_size(latent)
        self.latent = latent
        self.conv_in = nn.Conv1d(in_channels + freq_size, hidden, kernel_size, stride, (kernel_size - 1) // 2)
        self.gate = nn.Conv1d(hidden, hidden, 1, bias=False)  # SE-style gate
        self.conv_out = nn.Conv1d(hidden, latent * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        stats = torch.cat([x.mean(dim=3), x.mean(dim=1).transpose(1, 2)], dim=1)  # (B, C_in + F, T)
        h = self.conv_in(stats)  # (B, H, T')
        h = h * hard_sigmoid2(self.gate(h))  # (B, H, T')
        phi = hard_sigmoid2(self.conv_out(h))  # (B, L * L, T'), channel d * L + j
        return phi.view(B, self.latent, self.latent, -1).permute(0, 3, 1, 2)  # (B, T', L, L)


class DTDYConv2d(nn.Module):
    """DTDY convolution without bias: x (B, C_in, T, F) -> (B, C_out, T', F'), padding (k - 1) / 2.

    ``freq_size`` is F. Parameters: ``w0`` (C_out, C_in, k, k), ``q`` (L, C_in, k, k), ``p`` (C_out, L), ``bn_latent``
    (BN_a), ``bn_mix`` (BN_b), ``phi``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, freq_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"DTDYConv2d needs an odd kernel_size (padding (k-1)/2), got {kernel_size}.")
        latent = latent_size(in_channels, out_channels)
        self.in_channels, self.out_channels, self.latent = in_channels, out_channels, latent
        self.kernel_size, self.stride, self.padding = kernel_size, stride, (kernel_size - 1) // 2
        self.freq_size = freq_size
        k = kernel_size
        self.w0 = nn.Parameter(torch.empty(out_channels, in_channels, k, k))
        self.q = nn.Parameter(torch.empty(latent, in_channels, k, k))
        self.p = nn.Parameter(torch.empty(out_channels, latent))
        self.bn_latent = nn.BatchNorm2d(latent)
        self.bn_mix = nn.BatchNorm2d(latent)
        self.phi = PhiBranch(in_channels, freq_size, latent, kernel_size, stride)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: kaiming-normal (fan_out, relu) kernels, kaiming-normal (fan_out) and zero bias
        in the Phi branch, BatchNorm 1 and 0."""
        for weight in (self.w0, self.q):
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.p.data.view(self.out_channels, self.latent, 1, 1),
                                mode="fan_out", nonlinearity="relu")
        for conv in (self.phi.conv_in, self.phi.gate, self.phi.conv_out):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for bn in (self.bn_latent, self.bn_mix):
            bn.reset_parameters()
            bn.reset_running_stats()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"freq_size={self.freq_size}, latent={self.latent}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.conv2d(x, self.w0, None, self.stride, self.padding)  # W0 x: (B, C_out, T', F')
        z = self.bn_latent(F.conv2d(x, self.q, None, self.stride, self.padding))  # BN_a(Q x): (B, L, T', F')
        phi = self.phi(x)  # (B, T', L, L)
        m = torch.einsum("btdj,bjtf->bdtf", phi, z)  # Phi(t) z in every time bin: (B, L, T', F')
        latent = self.bn_mix(m) + z  # (B, L, T', F')
        return r + torch.einsum("cl,bltf->bctf", self.p, latent)  # r + P latent: (B, C_out, T', F')
