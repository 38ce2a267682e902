"""The Winograd F(4x4, 3x3) convolution of models/_winograd.py against F.conv2d, and where the CPU inference path
of models/_dtdy_cpu.py uses it."""

import pytest
import torch
import torch.nn.functional as F

from models import _dtdy_cpu
from models._dtdy import DTDYConv2d
from models._winograd import winograd_conv3x3, winograd_kernel


@pytest.mark.parametrize("B, c_in, c_out, H, W",
                         [(2, 5, 7, 9, 6), (3, 16, 8, 8, 8), (1, 3, 4, 1, 1), (2, 12, 10, 13, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_conv2d(B, c_in, c_out, H, W, bias):
    """Sizes multiple of the 4 x 4 tiles and not, a single pixel; the output split in two parts."""
    gen = torch.Generator().manual_seed(B * c_in + H)
    x = torch.randn(B, c_in, H, W, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64) if bias else None
    expected = F.conv2d(x, w, b, 1, 1)
    with torch.no_grad():
        parts = winograd_conv3x3(x, winograd_kernel(w), b, [c_out - 2, 2])
    assert [p.shape[1] for p in parts] == [c_out - 2, 2]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in parts)
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, rtol=1e-11, atol=1e-11)


def test_float32_error_is_a_few_times_the_direct_convolutions():
    """fp32 against fp64 at the widest layer's size: the chosen interpolation points keep the error small."""
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(4, 256, 51, 8, generator=gen)).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, generator=gen) / 48
    exact = F.conv2d(x.double(), w.double(), None, 1, 1)
    direct = (F.conv2d(x, w, None, 1, 1) - exact).abs().max().item()
    ours = (winograd_conv3x3(x, winograd_kernel(w), None, [256])[0] - exact).abs().max().item()
    assert ours < 1e-5 * exact.abs().max().item()
    assert ours < 8 * direct


def test_fast_path_uses_it_where_it_pays(monkeypatch):
    """In the CPU inference path, wide stride-1 3 x 3 DTDY layers compute W0 and Q as one Winograd convolution
    (no direct convolution call); narrow or strided layers run the two direct convolutions."""
    calls = []
    original = _dtdy_cpu._conv
    monkeypatch.setattr(_dtdy_cpu, "_conv", lambda *a: calls.append(1) or original(*a))
    wide = _dtdy_cpu.WINOGRAD_MIN_CHANNELS

    def direct_calls(conv: DTDYConv2d, x: torch.Tensor) -> int:
        calls.clear()
        with torch.no_grad():
            _dtdy_cpu.folded_dtdy_forward(conv, _dtdy_cpu.fold_dtdy(conv, torch.ones(16), torch.zeros(16)), x)
        return len(calls)

    x = torch.randn(2, wide, 12, 10)
    assert direct_calls(DTDYConv2d(wide, 16, 3, 1, 10).eval(), x) == 0
    assert direct_calls(DTDYConv2d(wide, 16, 3, 2, 10).eval(), x) == 2
    assert direct_calls(DTDYConv2d(wide // 2, 16, 3, 1, 10).eval(), x[:, ::2]) == 2
