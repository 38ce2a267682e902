"""Decomposed Temporal Dynamic convolution (DTDY).

S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network for
Text-Independent Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277 (2022).

The kernel of output time bin t is ``W(t) = W0 + P Phi(t) Q^T``: a static k x k kernel ``W0`` plus a dynamic
residual in an L-dimensional latent space. What is computed, exactly as the official code does:

    r  = conv_kxk(x; W0)                        static path                 (B, C_out, T', F')
    z  = BN_a(conv_kxk(x; Q))                   latent path                 (B, L, T', F')
    m  = Phi(t) z   for every (b, t, f)         per-time-bin mixing         (B, L, T', F')
    y  = r + P (BN_b(m) + z)                    1 x 1 projection P          (B, C_out, T', F')

Layout: tensors are time-major, ``(B, C, T, F)``, in channels-last memory, so each time bin's ``(F, C)`` slab
is contiguous: the mixing is one batched matmul over the ``B * T'`` slabs and P is one ``addmm`` over the rows
of all pixels. W0 and Q are two convolutions (stacking them into one saves little on CPU and makes every
later step read and write strided rows), except where a Winograd convolution computes both: on CPU in full
precision, the stride-1 3 x 3 layers with at least ``WINOGRAD_MIN_CHANNELS`` input channels, whose direct
convolutions are FLOP-bound, run [W0; Q] as one Winograd F(4x4, 3x3) convolution (models/_winograd.py: a
quarter of the multiplications; in narrower layers its transforms cost more than they save). The latent path
runs ``Lp = ceil(L / 8) * 8`` wide (at least 16 when training): the extra channels have zero Q rows, zero
BatchNorm weight and bias and zero P columns, so they stay exactly zero, but small channel counts like 11 make CPU
kernels several times slower than 16 (and in training, backward, 8 is slower than 16: x0.25's first stage).
The Phi branch's three convolutions over time are matmuls over time-major rows. Kernels are stored in (time,
frequency) orientation.

In eval mode BN_a is folded into Q, BN_b and the identity residual into M(t) = diag(s_b) Phi(t) + I, and
``P c_b`` into the static conv's bias; during inference (no autograd) these operands are computed once per set
of weights, a following BatchNorm (``forward_bn``) is folded in as well, and P adds in place into the static
path's output. All folds are exact. ``tests/reference_dtdy.py`` holds the straightforward formulation (official
layout) that tests/test_dtdy.py checks this module against, outputs and gradients.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models._winograd import winograd_conv3x3, winograd_kernel

log = logging.getLogger(__name__)

LANE = 8  # the latent size is padded with exact zeros to a multiple of 8 (AVX2 width) ...
TRAIN_MIN_LATENT = 16  # ... and to at least 16 in training (8-channel convolutions and BatchNorm backward are slower)
WINOGRAD_MIN_CHANNELS = 128  # stride-1 3 x 3 layers this wide run W0 and Q as one Winograd convolution on CPU


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
    The three convolutions over time are matmuls over time-major rows (``_conv1d_rows``); the modules hold the
    parameters in nn.Conv1d shapes, as the official code does.
    """

    def __init__(self, in_channels: int, freq_size: int, latent: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = phi_hidden_size(latent)
        self.latent = latent
        self.conv_in = nn.Conv1d(in_channels + freq_size, hidden, kernel_size, stride, (kernel_size - 1) // 2)
        self.gate = nn.Conv1d(hidden, hidden, 1, bias=False)  # SE-style gate
        self.conv_out = nn.Conv1d(hidden, latent * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x, *self.operands())
        return hard_sigmoid2(logits).view(x.shape[0], -1, self.latent, self.latent)  # channel d*L + j -> [d, j]

    def operands(self) -> tuple[torch.Tensor, ...]:
        """The weights as matmul operands: (W_in (k D, H), b_in, W_gate (H, H), W_out (3 H, L L), b_out)."""
        return (_rows_kernel(self.conv_in.weight), self.conv_in.bias, self.gate.weight[:, :, 0].t(),
                _rows_kernel(self.conv_out.weight), self.conv_out.bias)

    def logits(self, x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_gate: torch.Tensor,
               w_out: torch.Tensor, b_out: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T, F) -> the last convolution's output, before the hard sigmoid, (B, T', O)."""
        B, C, T, Fq = x.shape
        u = FrameMeans.apply(x.permute(0, 2, 3, 1).reshape(B * T, Fq, C)).view(B, T, C + Fq)
        h = _conv1d_rows(u, w_in, b_in, self.conv_in.kernel_size[0], self.conv_in.stride[0])  # (B, T', H)
        h = h * hard_sigmoid2(h @ w_gate)
        return _conv1d_rows(h, w_out, b_out, 3, 1)


def _rows_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A Conv1d kernel (O, D, k) as the right operand of ``_conv1d_rows``: (k D, O), row j*D + d."""
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0])


def _conv1d_rows(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Conv1d (odd kernel k, padding (k - 1) / 2) over time-major rows: u (B, T, D), weight (k D, O) -> (B, T', O).

    One matmul: the Phi branch's maps are a few hundred time bins of a few hundred features, where this costs a
    fraction of a Conv1d call, forward and backward. With fewer outputs than inputs (the first convolution) the
    rows are multiplied by the k taps at once and the k shifted products summed; otherwise the k shifted copies
    of the rows are multiplied side by side.
    """
    B, T, D = u.shape
    frames, out = (T - 1) // stride + 1, weight.shape[1]
    if k == 1:
        return torch.addmm(bias, u[:, ::stride].reshape(B * frames, D), weight).view(B, frames, out)
    padded = F.pad(u, (0, 0, (k - 1) // 2, (k - 1) // 2))
    span = stride * (frames - 1) + 1
    if out < D:
        taps = weight.view(k, D, out).transpose(0, 1).reshape(D, k * out)
        products = (padded.reshape(-1, D) @ taps).view(B, -1, k, out)
        result = bias + products[:, :span:stride, 0]
        for j in range(1, k):
            result = result + products[:, j:j + span:stride, j]
        return result
    windows = torch.cat([padded[:, j:j + span:stride] for j in range(k)], dim=2)
    return torch.addmm(bias, windows.reshape(B * frames, k * D), weight).view(B, frames, out)


class FrameMeans(torch.autograd.Function):
    """Per-time-bin statistics of the Phi branch: slabs (N, F, C) -> [mean over F (N, C); mean over C (N, F)].

    The same maths as two ``mean`` calls; the backward writes the input gradient in one broadcast add instead
    of two expanded tensors (the input is a full feature map, so this saves two passes over it).
    """

    @staticmethod
    def forward(ctx, slabs: torch.Tensor) -> torch.Tensor:
        N, ctx.freq, ctx.channels = slabs.shape
        over_channels = slabs.reshape(-1, ctx.channels) @ slabs.new_full((ctx.channels,), 1 / ctx.channels)
        return torch.cat([slabs.mean(dim=1), over_channels.view(N, ctx.freq)], dim=1)  # a matvec: short rows

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
        self.latent_padded_train = max(self.latent_padded, TRAIN_MIN_LATENT)  # the same in training
        self.kernel_size, self.stride, self.padding = kernel_size, stride, (kernel_size - 1) // 2
        self.freq_size = freq_size
        self.winograd = kernel_size == 3 and stride == 1 and in_channels >= WINOGRAD_MIN_CHANNELS
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
            return self._forward_plain(x)
        return self._forward_folded(x, None)

    def forward_bn(self, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        """bn(self(x)) for an eval-mode layer and BatchNorm during inference (no autograd): ``bn`` is folded into
        the operands as well. Bypasses this module's hooks: callers check that it has none."""
        return self._forward_folded(x, bn)

    def _forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """The computation as written, BatchNorms in their current mode (training)."""
        pad = self.latent_padded_train - self.latent
        q = _pad_rows(self.q, pad)
        u = winograd_kernel(torch.cat([self.w0, q])) if self._winograd_for(x) else None
        r, z = self._convs(x, self.w0, None, q, None, u)  # W0 x, Q x
        z = _batch_norm_padded(self.bn_latent, z, pad)
        phi_t = F.pad(self.phi(x).transpose(2, 3), (0, pad, 0, pad)).contiguous()  # Phi(t)^T (B, T', Lp, Lp)
        z = _batch_norm_padded(self.bn_mix, _mix(z, phi_t), pad) + z
        return _project(r, z, F.pad(self.p, (0, pad)).t())

    def _forward_folded(self, x: torch.Tensor, bn: nn.BatchNorm2d | None) -> torch.Tensor:
        """Eval mode: BN_a folded into Q (plus a bias), BN_b and the identity residual into M(t), P c_b into the
        bias. Without autograd, the folded operands are computed once per set of weights (``_folded``) and P adds
        in place."""
        inference = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        winograd = self._winograd_for(x)
        f = self._folded(bn, winograd) if inference else self._fold(bn, winograd)
        B, Lp = x.shape[0], self.latent_padded
        r, z = self._convs(x, f.w0, f.b0, f.q, f.b_q, f.u)  # W0 x + P c_b, BN_a(Q x)
        logits = self.phi.logits(x, f.w_in, f.b_in, f.w_gate, f.w_out, f.b_out)  # (B, T', Lp Lp)
        mixing_t = logits.clamp_(f.low, f.high) if inference else logits.clamp(f.low, f.high)
        mixing_t = mixing_t.view(B, -1, Lp, Lp)  # M(t)^T = (diag(s_b) Phi(t) + I)^T
        return _project(r, _mix(z, mixing_t), f.p_t, inplace=inference)

    def _folded(self, bn: nn.BatchNorm2d | None, winograd: bool) -> _Folded:
        """``_fold(bn, winograd)``, cached until a parameter or BatchNorm statistic changes (in place or by
        replacement)."""
        phi = self.phi  # every parameter and statistic by name: self.parameters() costs more than the check
        tensors = [self.w0, self.q, self.p, *_bn_tensors(self.bn_latent), *_bn_tensors(self.bn_mix),
                   phi.conv_in.weight, phi.conv_in.bias, phi.gate.weight, phi.conv_out.weight, phi.conv_out.bias]
        if bn is not None:
            tensors += _bn_tensors(bn)
        key = (winograd, *((t.data_ptr(), t._version) for t in tensors))
        if getattr(self, "_fold_key", None) != key:
            self._fold_cache, self._fold_key = self._fold(bn, winograd), key
        return self._fold_cache

    def _fold(self, bn: nn.BatchNorm2d | None, winograd: bool) -> _Folded:
        """The eval-mode operands, all exact rewrites of the layer (followed by ``bn`` when given).

        With hsig2(v) = clamp(v, -3, 3) / 3 + 1 and BN_b(v) = s v + c_b, the latent update BN_b(Phi z) + z is
        M z + c_b with M[d, j] = (s_d / 3) clamp(v_dj, -3, 3) + s_d + delta_dj = clamp(v'_dj, o_dj - |s_d|,
        o_dj + |s_d|), where v' = (s_d / 3) v + o and o = s_d + delta_dj. So the Phi branch's last convolution,
        its columns scaled by s_d / 3 and o added to its bias, writes v' straight into an Lp x Lp grid, and one
        clamp makes it M^T (zero rows and columns in the padding).
        A following BatchNorm scales the rows of W0 and P and shifts the bias. ``winograd``: also the two kernels
        as one Winograd kernel.
        """
        with torch.autocast(self.w0.device.type, enabled=False):  # exact, in the weights' precision
            return self._fold_operands(bn, winograd)

    def _fold_operands(self, bn: nn.BatchNorm2d | None, winograd: bool) -> _Folded:
        L, Lp, pad = self.latent, self.latent_padded, self.latent_padded - self.latent
        a_scale, a_shift = _bn_affine(self.bn_latent)
        b_scale, b_shift = _bn_affine(self.bn_mix)
        w0, p, p_shift = self.w0, self.p, self.p @ b_shift
        if bn is not None:
            o_scale, o_shift = _bn_affine(bn)
            w0, p, p_shift = w0 * o_scale.view(-1, 1, 1, 1), p * o_scale.view(-1, 1), p_shift * o_scale + o_shift
        q, b_q = _pad_rows(self.q * a_scale.view(L, 1, 1, 1), pad), _pad_rows(a_shift, pad)
        w_in, b_in, w_gate, w_out, b_out = self.phi.operands()
        d, j = torch.meshgrid(*(torch.arange(L, device=w_out.device),) * 2, indexing="ij")
        cells = (j * Lp + d).flatten()  # where entry d*L + j of Phi goes in the Lp x Lp grid of M^T
        w_grid = w_out.new_zeros(w_out.shape[0], Lp * Lp).index_copy(1, cells, w_out)
        b_grid = b_out.new_zeros(Lp * Lp).index_copy(0, cells, b_out)
        scale = F.pad(b_scale / 3, (0, pad)).repeat(Lp)  # s_d / 3 at cell j * Lp + d (column d of M^T)
        offset = F.pad(b_scale.view(1, L) + torch.eye(L, dtype=b_scale.dtype, device=b_scale.device),
                       (0, pad, 0, pad)).flatten()
        w_grid, b_grid = w_grid * scale, torch.addcmul(offset, b_grid, scale)
        reach = 3 * scale.abs()
        u = winograd_kernel(torch.cat([w0, q])) if winograd else None
        return _Folded(_channels_last(w0), p_shift, _channels_last(q), b_q, u, w_in, b_in, w_gate, w_grid, b_grid,
                       offset - reach, offset + reach, F.pad(p, (0, pad)).t().contiguous())

    def _winograd_for(self, x: torch.Tensor) -> bool:
        """Winograd for this layer and input: a wide stride-1 3 x 3 layer on CPU in full precision (GPU libraries
        have their own fast algorithms; under autocast the transforms would amplify bf16 rounding)."""
        return (self.winograd and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu"))

    def _convs(self, x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, q: torch.Tensor,
               b_q: torch.Tensor | None, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W0 x + b0, Q x + b_q), as one Winograd convolution with the kernel ``u`` of [W0; Q] when given."""
        if u is None:
            return self._conv(x, w0, b0), self._conv(x, q, b_q)
        bias = None if b0 is None else torch.cat([b0, b_q])
        r, z = winograd_conv3x3(x, u, bias, (self.out_channels, q.shape[0]))
        return r, z

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The layer's k x k convolution (stride, padding (k - 1) / 2) with another kernel; a strided 1 x 1 one
        is a matmul over channel rows."""
        if self.kernel_size != 1:
            return F.conv2d(x, weight, bias, self.stride, self.padding)
        x = x[:, :, ::self.stride, ::self.stride]
        B, C, T, Fq = x.shape
        rows, w = x.permute(0, 2, 3, 1).reshape(-1, C), weight.view(-1, C).t()
        rows = rows @ w if bias is None else torch.addmm(bias, rows, w)
        return rows.view(B, T, Fq, -1).permute(0, 3, 1, 2)


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)


def _bn_tensors(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    return bn.weight, bn.bias, bn.running_mean, bn.running_var


class _Folded(NamedTuple):
    """Eval-mode operands of a DTDYConv2d (see ``DTDYConv2d._fold``)."""

    w0: torch.Tensor  # W0 (C_out, C_in, k, k)
    b0: torch.Tensor  # P c_b
    q: torch.Tensor  # [diag(a) Q; 0] (Lp, C_in, k, k)
    b_q: torch.Tensor  # [c_a; 0]
    u: torch.Tensor | None  # [W0; Q] as a Winograd kernel, when the layer runs that way
    w_in: torch.Tensor  # Phi branch, as in PhiBranch.operands
    b_in: torch.Tensor
    w_gate: torch.Tensor
    w_out: torch.Tensor  # (3 H, Lp Lp): the last convolution on the Lp x Lp grid of M^T, columns scaled
    b_out: torch.Tensor  # its bias, scaled, plus 1 s_b^T + I
    low: torch.Tensor  # (Lp Lp,): the clamp that makes the grid M^T
    high: torch.Tensor
    p_t: torch.Tensor  # [P, 0]^T (Lp, C_out)


def _pad_rows(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Append ``pad`` zero rows (output channels) to a weight or bias."""
    return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


def _batch_norm_padded(bn: nn.BatchNorm2d, x: torch.Tensor, pad: int) -> torch.Tensor:
    """``bn`` applied to x (B, L + pad, T, F) whose last ``pad`` channels are zero; they stay zero (zero weight and
    bias) and do not touch the running statistics. Same update rule as nn.BatchNorm2d."""
    if pad == 0:
        return bn(x)
    zeros = bn.running_mean.new_zeros(pad)
    running_mean = torch.cat([bn.running_mean, zeros])
    running_var = torch.cat([bn.running_var, zeros + 1])
    weight, bias = torch.cat([bn.weight, zeros]), torch.cat([bn.bias, zeros])
    if not bn.training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, bn.eps)
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, bn.eps)
    with torch.no_grad():
        bn.running_mean.copy_(running_mean[:-pad])
        bn.running_var.copy_(running_var[:-pad])
    return y


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with BN(v) = scale * v + shift in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _mix(z: torch.Tensor, phi_t: torch.Tensor) -> torch.Tensor:
    """m[b, d, t, f] = sum_j phi[b, t, d, j] z[b, j, t, f], from the transposed matrices.

    z (B, L, T, F) (a channels-last view is used in place), phi_t (B, T, L, L) contiguous, ``phi_t[b, t, j, d]``
    -> m (B, L, T, F) channels-last. One small matmul per (b, t); a contiguous right operand runs them about
    twice as fast as a transposed view.
    """
    B, L, T, Fq = z.shape
    slabs = z.permute(0, 2, 3, 1).reshape(B * T, Fq, L)  # one (F, L) matrix per (b, t)
    m = torch.bmm(slabs, phi_t.reshape(B * T, L, L))  # (B*T, F, L)
    return m.view(B, T, Fq, L).permute(0, 3, 1, 2)


def _project(r: torch.Tensor, z: torch.Tensor, p_t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """y = r + P z: r (B, C_out, T, F), z (B, L, T, F), p_t = P^T (L, C_out) -> (B, C_out, T, F) channels-last.

    ``inplace`` (no autograd) adds into r's memory where r is a channels-last view (the static convolution's
    output) and returns that view: no copy of the layer's largest tensor.
    """
    B, C, T, Fq = r.shape
    rows = r.permute(0, 2, 3, 1).reshape(-1, C)
    z_rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    if inplace and rows.data_ptr() == r.data_ptr():  # reshape gave a view of r, not a copy
        rows.addmm_(z_rows.to(rows.dtype), p_t.to(rows.dtype))  # in-place ops are not autocast: match dtypes
        return r
    return torch.addmm(rows, z_rows, p_t).view(B, T, Fq, C).permute(0, 3, 1, 2)
