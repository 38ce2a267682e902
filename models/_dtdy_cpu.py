"""The CPU inference path of the ResNet encoders: every block's convolution and BatchNorm as folded operands.

``with fast_cpu_inference(model):`` makes eval-mode BasicBlocks without autograd compute ``bn(conv(x))`` from operands
folded once per block, each an exact rewrite (equal to models/_dtdy.py to rounding); in training, with autograd,
autocast, compilation or hooks, the readable forward runs. Weights must not change inside the block. DTDY: BN_a folds
into Q, BN_b and the residual into ``M(t) = diag(s_b) Phi(t) + I``, the block's BatchNorm into W0 and P; the mixing is
one batched matmul over ``B * T'`` channels-last slabs. Conv2d + BatchNorm become one conv.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models._dtdy import DTDYConv2d
from models._resnet import BasicBlock

log = logging.getLogger(__name__)



@contextmanager
def fast_cpu_inference(model: nn.Module) -> Iterator[nn.Module]:
    """Within the ``with`` block, ``model``'s BasicBlocks run the folded CPU path; yields the model."""
    devices = {t.device.type for t in model.parameters()}
    if devices != {"cpu"}:
        raise ValueError(f"fast_cpu_inference is for a model on the CPU; this one's parameters are on {devices}. "
                         "Run GPU models as they are.")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    for block in blocks:
        block.forward = _FastBlock(block)
    try:
        yield model
    finally:
        for block in blocks:
            del block.forward  # the class's readable forward again


class _FastBlock:
    """BasicBlock.forward with the conv + BatchNorm pairs folded where that is exact and nobody looks."""

    def __init__(self, block: BasicBlock) -> None:
        self.block = block
        self.pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if block.downsample is not None:
            self.pairs.append((block.downsample[0], block.downsample[1]))
        self.operands: list[_Folded | tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        if block.training:
            self.operands = None  # the weights may change before the next inference
        if not self._applies(x):
            return BasicBlock.forward(block, x)
        if self.operands is None:
            with torch.no_grad():
                self.operands = [_fold(conv, bn) for conv, bn in self.pairs]
        out = block.relu(_conv_bn(block.conv1, self.operands[0], x))
        out = _conv_bn(block.conv2, self.operands[1], out)
        shortcut = x if block.downsample is None else _conv_bn(block.downsample[0], self.operands[2], x)
        return block.relu(out.add_(shortcut))

    def _applies(self, x: torch.Tensor) -> bool:
        if (self.block.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
                or torch.is_autocast_enabled("cpu")):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.block.modules())


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> _Folded | tuple[torch.Tensor, torch.Tensor]:
    scale, shift = _bn_affine(bn)
    if isinstance(conv, DTDYConv2d):
        return fold_dtdy(conv, scale, shift)
    return _channels_last(conv.weight * scale.view(-1, 1, 1, 1)), shift  # a plain Conv2d


def _conv_bn(conv: nn.Module, folded: _Folded | tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """bn(conv(x)) from the folded operands."""
    if isinstance(folded, _Folded):
        return folded_dtdy_forward(conv, folded, x)
    weight, bias = folded
    return F.conv2d(x, weight, bias, conv.stride, conv.padding)


class _Folded(NamedTuple):
    """The inference operands of a DTDYConv2d followed by a BatchNorm (``fold_dtdy``)."""

    w0: torch.Tensor  # diag(s) W0 (C_out, C_in, k, k)
    b0: torch.Tensor  # s * P c_b + c, the output bias (C_out,)
    q: torch.Tensor  # diag(s_a) Q (L, C_in, k, k)
    b_q: torch.Tensor  # c_a (L,)
    w_in: torch.Tensor  # the Phi branch's convolutions as matmul operands (``_rows_kernel``)
    b_in: torch.Tensor
    w_gate: torch.Tensor  # (H, H)
    w_out: torch.Tensor  # (3 H, L L): the last convolution onto the entries of M^T, columns scaled
    b_out: torch.Tensor  # its bias, scaled, plus 1 s_b^T + I
    low: torch.Tensor  # (L L,): the clamp that makes the entries M^T
    high: torch.Tensor
    p_t: torch.Tensor  # (diag(s) P)^T (L, C_out)


def fold_dtdy(conv: DTDYConv2d, scale: torch.Tensor, shift: torch.Tensor) -> _Folded:
    """The operands of ``scale * conv(x) + shift`` for an eval-mode layer, all exact rewrites: BN_b(Phi z) + z is M z +
    c_b, M = clamp(v', o - |s|, o + |s|) from the Phi branch's rescaled last convolution (o = s + I)."""
    L = conv.latent
    a_scale, a_shift = _bn_affine(conv.bn_latent)
    b_scale, b_shift = _bn_affine(conv.bn_mix)
    w0, p = conv.w0 * scale.view(-1, 1, 1, 1), conv.p * scale.view(-1, 1)
    b0 = p @ b_shift + shift
    q, b_q = conv.q * a_scale.view(L, 1, 1, 1), a_shift
    phi = conv.phi
    w_out = _rows_kernel(phi.conv_out.weight).view(-1, L, L).transpose(1, 2).reshape(-1, L * L)  # column j L + d
    b_out = phi.conv_out.bias.view(L, L).t().flatten()  # entry d L + j of Phi at j L + d: M^T
    col_scale = (b_scale / 3).repeat(L)  # s_d / 3 at j L + d
    offset = (b_scale.view(1, L) + torch.eye(L, dtype=b_scale.dtype)).flatten()  # s_d + delta_dj at j L + d
    reach = 3 * col_scale.abs()
    return _Folded(_channels_last(w0), b0, _channels_last(q), b_q,
                   _rows_kernel(phi.conv_in.weight), phi.conv_in.bias, phi.gate.weight[:, :, 0].t(),
                   w_out * col_scale, torch.addcmul(offset, b_out, col_scale), offset - reach, offset + reach,
                   p.t().contiguous())


def folded_dtdy_forward(conv: DTDYConv2d, f: _Folded, x: torch.Tensor) -> torch.Tensor:
    """``scale * conv(x) + shift`` from ``fold_dtdy``'s operands: x (B, C_in, T, F) -> (B, C_out, T', F')."""
    B, C, T, Fq = x.shape
    L = f.p_t.shape[0]
    r, z = _conv(conv, x, f.w0, f.b0), _conv(conv, x, f.q, f.b_q)  # (B, C_out, T', F'), (B, L, T', F')
    slabs = x.permute(0, 2, 3, 1)  # (B, T, F, C)
    stats = torch.cat([slabs.mean(dim=2), slabs.mean(dim=3)], dim=2)  # (B, T, C + F), time-major rows
    k, stride = conv.kernel_size, conv.stride
    h = _conv1d_rows(stats, f.w_in, f.b_in, k, stride)  # (B, T', H)
    h = h * (2.0 * F.hardsigmoid(h @ f.w_gate))
    mixing_t = _conv1d_rows(h, f.w_out, f.b_out, 3, 1).clamp_(f.low, f.high)  # (B, T', L L), M(t)^T
    T_out = mixing_t.shape[1]
    z_slabs = z.permute(0, 2, 3, 1).reshape(B * T_out, -1, L)  # (B T', F', L)
    mixed = torch.bmm(z_slabs, mixing_t.view(B * T_out, L, L))  # (M(t) z)^T: (B T', F', L)
    rows = r.permute(0, 2, 3, 1).reshape(-1, conv.out_channels)  # (B T' F', C_out), a view when channels-last
    if rows.data_ptr() == r.data_ptr():
        rows.addmm_(mixed.view(-1, L), f.p_t)  # P (M z) added in place into r
        return r
    return torch.addmm(rows, mixed.view(-1, L), f.p_t).view(B, T_out, -1, conv.out_channels).permute(0, 3, 1, 2)


def _conv(conv: DTDYConv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The layer's k x k convolution with another kernel; a strided 1 x 1 one is a matmul over channel rows."""
    if conv.kernel_size != 1:
        return F.conv2d(x, weight, bias, conv.stride, conv.padding)
    x = x[:, :, ::conv.stride, ::conv.stride]
    B, C, T, Fq = x.shape
    rows = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, C), weight.view(-1, C).t())  # (B T F, O)
    return rows.view(B, T, Fq, -1).permute(0, 3, 1, 2)


def _rows_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A Conv1d kernel (O, D, k) as the right operand of ``_conv1d_rows``: (k D, O), row j * D + d."""
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0])


def _conv1d_rows(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Conv1d (odd k, padding (k - 1) / 2) over time-major rows as one matmul: u (B, T, D), weight (k D, O) -> (B, T',
    O)."""
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


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with BN(v) = scale * v + shift in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale
