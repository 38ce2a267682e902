"""Winograd F(4x4, 3x3): a 3 x 3 convolution (stride 1, padding 1) with 4x fewer multiplications, for inference.

A. Lavin, S. Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016. Every 4 x 4 block of outputs
comes from the 6 x 6 block of inputs around it: ``Y = A^T [(G g G^T) * (B^T d B)] A``, summed over the input
channels. With the tiles' 36 transformed values as a leading axis, the sum over channels is one batched matmul,
``(36, tiles, C_in) @ (36, C_in, C_out)``, against 9 multiplications per output of the direct algorithm; the
transforms are matmuls with 36 x 36 and 16 x 36 constant matrices. Used only by the CPU inference path of
models/_dtdy_cpu.py (no autograd, no custom operators), tested against F.conv2d in tests/test_winograd.py.

Interpolation points 0, 1, -1, 1/2, -2 (and infinity): in fp32 the error is a few times that of a direct
convolution (about 5e-6 relative, measured against fp64), 2-3x smaller than with the textbook points 0, +-1, +-2.
In fp64 it is exact to rounding.

Where it pays (bench/model_speed.py, docs/benchmarks.md): the 128- and 256-channel stride-1 layers of the DTDY
ResNets, whose direct convolutions run near the CPU's peak. Below 128 channels the transforms (memory-bound,
2.25x the input's size) cost more than the multiplications saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction as Q

import torch

TILE = 4  # outputs per tile side (m); the input tile is m + 2 = 6
_AT = [[1, 1, 1, 1, 1, 0],
       [0, 1, -1, Q(1, 2), -2, 0],
       [0, 1, 1, Q(1, 4), 4, 0],
       [0, 1, -1, Q(1, 8), -8, 1]]  # 4 x 6; column 1 (point 1) is all ones
_G = [[1, 0, 0],
      [Q(1, 3), Q(1, 3), Q(1, 3)],
      [Q(-1, 3), Q(1, 3), Q(-1, 3)],
      [Q(-16, 15), Q(-8, 15), Q(-4, 15)],
      [Q(1, 15), Q(-2, 15), Q(4, 15)],
      [0, 0, 1]]  # 6 x 3
_BT = [[1, Q(-3, 2), -2, Q(3, 2), 1, 0],
       [0, -1, Q(1, 2), Q(5, 2), 1, 0],
       [0, 1, Q(-5, 2), Q(1, 2), 1, 0],
       [0, -2, -1, 2, 1, 0],
       [0, Q(1, 2), -1, Q(-1, 2), 1, 0],
       [0, 1, Q(-3, 2), -2, Q(3, 2), 1]]  # 6 x 6
BIAS_CELL = 1 * 6 + 1  # (point 1, point 1): A^T e_1 = 1, so a constant added there adds to all 16 outputs


def _kron(rows: list[list]) -> torch.Tensor:
    m = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    return torch.kron(m, m)


_KERNEL = _kron(_G)  # (36, 9): the transformed kernel, row a*6 + b, from the flattened 3 x 3 kernel
_INPUT = _kron(_BT)  # (36, 36): the transformed input tile from the flattened 6 x 6 tile
_OUTPUT = _kron(_AT)  # (16, 36): the 4 x 4 outputs from the 36 products


def _matrices(like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(m.to(like.device, like.dtype) for m in (_KERNEL, _INPUT, _OUTPUT))


def winograd_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3 x 3 kernel (C_out, C_in, 3, 3) as the right operand of ``winograd_conv3x3``: (36, C_in, C_out)."""
    c_out, c_in = weight.shape[:2]
    kernel, _, _ = _matrices(weight)
    taps = weight.permute(2, 3, 1, 0).reshape(9, c_in * c_out)  # (9, C_in C_out): a transpose of the small side
    return (kernel @ taps).view(36, c_in, c_out)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
                     sizes: Sequence[int]) -> list[torch.Tensor]:
    """``F.conv2d(x, w, bias, 1, 1).split(sizes, 1)`` with ``u = winograd_kernel(w)``, each part channels-last.

    x (B, C_in, H, W) (channels-last memory is read in place), u (36, C_in, C_out), bias (C_out,) or None, sizes
    summing to C_out -> tensors (B, size, H, W) in channels-last memory. Inference only: the bias is added in
    place and the tile copies are not meant for autograd.
    """
    B, C, H, W = x.shape
    _, transform_in, transform_out = _matrices(x)
    nh, nw = _tile_counts(H, W)
    v = (transform_in @ _tiles(x.permute(0, 2, 3, 1)).view(36, -1)).view(36, -1, C)  # (36, tiles, C_in)
    m = torch.bmm(v, u)  # (36, tiles, C_out)
    if bias is not None:
        m[BIAS_CELL] += bias
    y = (transform_out @ m.view(36, -1)).view(TILE, TILE, B, nh, nw, -1).permute(2, 3, 0, 4, 1, 5)
    return [_untile(part, H, W).permute(0, 3, 1, 2) for part in y.split(list(sizes), dim=5)]  # (B, size, H, W)


def _tile_counts(H: int, W: int) -> tuple[int, int]:
    """Output tiles per column and per row: ceil(H / 4), ceil(W / 4)."""
    return -(-H // TILE), -(-W // TILE)


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """The overlapping 6 x 6 tiles, stride 4, of the input padded by one zero row and column on every side:
    x (B, H, W, C) -> (6, 6, B, nh, nw, C), ``tiles[a, b, n, i, j] = padded[n, 4 i + a, 4 j + b]``.

    Offsets 0-3 of every tile partition the padded rows and 4-5 are offsets 0-1 of the next tile, so the tiles
    are four strided block copies.
    """
    B, H, W, C = x.shape
    nh, nw = _tile_counts(H, W)
    rows = x.new_empty(B, TILE * nh + 4, TILE * nw + 4, C)  # zero only the border, not the whole
    rows[:, 0].zero_()
    rows[:, H + 1:].zero_()
    rows[:, 1:H + 1, 0].zero_()
    rows[:, 1:H + 1, W + 1:].zero_()
    rows[:, 1:H + 1, 1:W + 1] = x
    tiles = x.new_empty(6, 6, B, nh, nw, C)
    for a, b, block in _blocks(rows, nh, nw):
        tiles[a, b].copy_(block)
    return tiles


def _untile(tiles: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The 4 x 4 output tiles (B, nh, 4, nw, 4, C) (any strides) -> the output (B, H, W, C), contiguous, in one
    copy: complete tiles as one block, the last partial row and column of tiles as up to three more."""
    out = tiles.new_empty(tiles.shape[0], H, W, tiles.shape[5])
    for source, target in _untile_blocks(tiles, out):
        target.copy_(source)
    return out


def _untile_blocks(tiles: torch.Tensor, out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Matching (view of ``tiles``, view of ``out``) pairs of the same shape (B, i, h, j, w, C) for ``_untile``."""
    B, H, W, C = out.shape
    full_h, full_w = H // TILE, W // TILE
    pairs = []
    for i0, ni, rows in ((0, full_h, TILE), (full_h, 1, H - TILE * full_h)):  # complete tiles, then the rest
        for j0, nj, cols in ((0, full_w, TILE), (full_w, 1, W - TILE * full_w)):
            if ni and nj and rows and cols:
                target = out[:, TILE * i0:TILE * i0 + ni * rows, TILE * j0:TILE * j0 + nj * cols]
                pairs.append((tiles[:, i0:i0 + ni, :rows, j0:j0 + nj, :cols],
                              target.view(B, ni, rows, nj, cols, C)))
    return pairs


_PARTS = ((slice(0, 4), 0, 4), (slice(4, 6), TILE, 2))  # tile offsets, their first row in the tile's block, count


def _blocks(rows: torch.Tensor, nh: int, nw: int) -> list[tuple[slice, slice, torch.Tensor]]:
    """The four blocks of ``_tiles``: (offsets a, offsets b, view of ``rows`` as (a, b, B, nh, nw, C))."""
    B, C = rows.shape[0], rows.shape[3]
    blocks = []
    for a, h0, h_size in _PARTS:
        for b, w0, w_size in _PARTS:
            view = rows[:, h0:h0 + TILE * nh, w0:w0 + TILE * nw].view(B, nh, TILE, nw, TILE, C)
            blocks.append((a, b, view[:, :, :h_size, :, :w_size].permute(2, 4, 0, 1, 3, 5)))
    return blocks
