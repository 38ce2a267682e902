"""Decomposed Temporal Dynamic convolution (DTDY).

S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network for
Text-Independent Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277 (2022).

The kernel of output time bin t is ``W(t) = W0 + P Phi(t) Q^T``: a static k x k kernel ``W0`` plus a dynamic
residual in an L-dimensional latent space. What is computed, exactly as the official code does:

    r  = conv_kxk(x; W0)                        static path                 (B, C_out, T', F')
    z  = BN_a(conv_kxk(x; Q))                   latent path                 (B, L, T', F')
    m  = Phi(t) z   for every (b, t, f)         per-time-bin mixing         (B, L, T', F')
    y  = r + P (BN_b(m) + z)                    1 x 1 projection P          (B, C_out, T', F')

Layout: tensors are time-major, ``(B, C, T, F)``, ideally in channels-last memory, so each time bin's
``(F, C)`` slab is contiguous. W0 and Q are then computed by one convolution with ``C_out + L`` output channels,
the mixing is a single batched matmul over ``B * T'`` slabs on a strided view (no copy), and P plus the static
path is one ``addmm``. The latent path runs ``Lp = ceil(L / 8) * 8`` wide: the extra channels have zero Q rows,
zero BatchNorm weight and bias and zero P columns, so they stay exactly zero, but small channel counts like
11 make CPU kernels several times slower than 16. Kernels are stored in the same (time, frequency) orientation.
In eval mode BN_a is folded into Q, BN_b and the identity residual into Phi(t), and ``P c_b`` into the conv
bias; all folds are exact. ``bench/_reference_dtdy.py`` holds the straightforward formulation (official layout)
that tests/test_dtdy.py checks this module against, outputs and gradients.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LANE = 8  # the latent size and the stacked conv are padded with exact zeros to multiples of 8 (AVX2 width)


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
    """Temporal dynamic matrices Phi(t) from frequency- and channel-mean statistics of the layer input.

    x (B, C_in, T, F) -> phi (B, T', L, L), ``phi[b, t, d, j]``: output row d, input column j, values in [0, 2].
    """

    def __init__(self, in_channels: int, freq_size: int, latent: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = phi_hidden_size(latent)
        self.latent = latent
        self.conv_in = nn.Conv1d(in_channels + freq_size, hidden, kernel_size, stride, (kernel_size - 1) // 2)
        self.gate = nn.Conv1d(hidden, hidden, 1, bias=False)  # SE-style gate
        self.conv_out = nn.Conv1d(hidden, latent * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, Fq = x.shape
        u = FrameMeans.apply(x.permute(0, 2, 3, 1).reshape(B * T, Fq, C))  # (B*T, C_in + F)
        h = self.conv_in(u.view(B, T, C + Fq).transpose(1, 2))  # (B, H, T')
        h = h * hard_sigmoid2(self.gate(h))
        phi = hard_sigmoid2(self.conv_out(h))  # (B, L*L, T'), channel d*L + j
        return phi.view(B, self.latent, self.latent, -1).permute(0, 3, 1, 2)  # (B, T', L, L)


class FrameMeans(torch.autograd.Function):
    """Per-time-bin statistics of the Phi branch: slabs (N, F, C) -> [mean over F (N, C); mean over C (N, F)].

    The same maths as two ``mean`` calls; the backward writes the input gradient in one broadcast add instead
    of two expanded tensors (the input is a full feature map, so this saves two passes over it).
    """

    @staticmethod
    def forward(ctx, slabs: torch.Tensor) -> torch.Tensor:
        ctx.freq, ctx.channels = slabs.shape[1], slabs.shape[2]
        return torch.cat([slabs.mean(dim=1), slabs.mean(dim=2)], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad_c, grad_f = grad.split([ctx.channels, ctx.freq], dim=1)
        return (grad_c / ctx.freq).unsqueeze(1) + (grad_f / ctx.channels).unsqueeze(2)


class DTDYConv2d(nn.Module):
    """DTDY convolution, no bias (the enclosing block's BatchNorm follows).

    x (B, C_in, T, F) -> y (B, C_out, T', F'), square kernel and stride, padding (k - 1) / 2.
    ``freq_size`` is F, the frequency size entering the layer (the Phi branch reads per-frequency means).
    Parameters: ``w0`` (C_out, C_in, k, k), ``q`` (L, C_in, k, k), ``p`` (C_out, L), ``bn_latent`` (BN_a),
    ``bn_mix`` (BN_b), ``phi`` (the Phi branch).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, freq_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"DTDYConv2d needs an odd kernel_size (padding (k-1)/2), got {kernel_size}.")
        latent = latent_size(in_channels, out_channels)
        self.in_channels, self.out_channels, self.latent = in_channels, out_channels, latent
        self.latent_padded = latent + (-latent % LANE)  # Lp, the width of the latent path in computation
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
        """The official initialisation: kaiming-normal (fan_out, relu) for the 2D kernels, kaiming-normal
        (fan_out) and zero bias for the Phi branch, BatchNorm weight 1 and bias 0."""
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
        if self.bn_latent.training or self.bn_mix.training:
            return self._forward_train(x)
        return self._forward_folded(x)

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.latent_padded - self.latent
        r, z = self._conv(x, torch.cat([self.w0, _pad_rows(self.q, pad)]), None)  # W0 * x, Q * x
        z = _batch_norm_padded(self.bn_latent, z.contiguous(memory_format=torch.channels_last), pad)
        phi = F.pad(self.phi(x), (0, pad, 0, pad))  # (B, T', Lp, Lp)
        z = _batch_norm_padded(self.bn_mix, _mix(z, phi), pad) + z
        return _project(r, z, F.pad(self.p, (0, pad)))

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode: BN_a folded into Q (plus a bias), BN_b and the residual into Phi(t), P c_b into the bias."""
        L, pad = self.latent, self.latent_padded - self.latent
        a_scale, a_shift = _bn_affine(self.bn_latent)
        b_scale, b_shift = _bn_affine(self.bn_mix)
        weight = torch.cat([self.w0, _pad_rows(self.q * a_scale.view(L, 1, 1, 1), pad)])
        bias = torch.cat([self.p @ b_shift, _pad_rows(a_shift, pad)])
        r, z = self._conv(x, weight, bias)  # r + P c_b, BN_a(Q * x)
        # BN_b(Phi z) + z = (diag(b_scale) Phi + I) z + b_shift
        phi = self.phi(x) * b_scale.view(L, 1) + torch.eye(L, dtype=b_scale.dtype, device=b_scale.device)
        return _project(r, _mix(z, F.pad(phi, (0, pad, 0, pad))), F.pad(self.p, (0, pad)))

    def _conv(self, x: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One convolution with the stacked kernel [W0; Q; 0] (C_out + Lp, C_in, k, k) -> (r, z) channel views."""
        split = [self.out_channels, self.latent_padded]
        if self.kernel_size == 1:  # a strided 1 x 1 conv is a matmul over channel rows
            xs = x[:, :, ::self.stride, ::self.stride]
            B, C, T, Fq = xs.shape
            rows = xs.permute(0, 2, 3, 1).reshape(-1, C)
            w = weight.reshape(weight.shape[0], C).t()
            y = (rows @ w if bias is None else torch.addmm(bias, rows, w)).view(B, T, Fq, -1).permute(0, 3, 1, 2)
            return tuple(y.split(split, dim=1))
        pad = -weight.shape[0] % LANE
        if pad:
            weight = _pad_rows(weight, pad)
            bias = None if bias is None else _pad_rows(bias, pad)
            split.append(pad)
        y = F.conv2d(x, weight, bias, self.stride, self.padding)  # (B, C_out + Lp (+ pad), T', F')
        return tuple(y.split(split, dim=1)[:2])


def _pad_rows(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Append ``pad`` zero rows (output channels) to a weight or bias."""
    return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


def _batch_norm_padded(bn: nn.BatchNorm2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """``bn`` (training mode) applied to x (B, L + pad, T, F) whose last ``pad`` channels are zero; they stay zero
    (zero weight and bias) and do not touch the running statistics. Same update rule as nn.BatchNorm2d."""
    if pad == 0:
        return bn(x)
    zeros = bn.running_mean.new_zeros(pad)
    running_mean = torch.cat([bn.running_mean, zeros])
    running_var = torch.cat([bn.running_var, zeros + 1])
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y = F.batch_norm(x, running_mean, running_var, torch.cat([bn.weight, zeros]), torch.cat([bn.bias, zeros]),
                     True, momentum, bn.eps)
    with torch.no_grad():
        bn.running_mean.copy_(running_mean[:-pad])
        bn.running_var.copy_(running_var[:-pad])
    return y


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with BN(v) = scale * v + shift in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _mix(z: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """m[b, d, t, f] = sum_j phi[b, t, d, j] z[b, j, t, f].

    z (B, L, T, F) (a channels-last view is used in place), phi (B, T, L, L) -> m (B, L, T, F) channels-last.
    """
    B, L, T, Fq = z.shape
    slabs = z.permute(0, 2, 3, 1).reshape(B * T, Fq, L)  # one (F, L) matrix per (b, t)
    m = torch.bmm(slabs, phi.reshape(B * T, L, L).transpose(1, 2))  # (B*T, F, L)
    return m.view(B, T, Fq, L).permute(0, 3, 1, 2)


def _project(r: torch.Tensor, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """y = r + P z: r (B, C_out, T, F), z (B, L, T, F), p (C_out, L) -> (B, C_out, T, F) channels-last."""
    B, C, T, Fq = r.shape
    rows = torch.addmm(r.permute(0, 2, 3, 1).reshape(-1, C), z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), p.t())
    return rows.view(B, T, Fq, C).permute(0, 3, 1, 2)
