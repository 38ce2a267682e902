"""The Winograd F(4x4, 3x3) convolution of models/_winograd.py against F.conv2d, and where DTDY layers use it."""

import pytest
import torch
import torch.nn.functional as F

from models._dtdy import WINOGRAD_MIN_CHANNELS, DTDYConv2d
from models._winograd import winograd_conv3x3, winograd_kernel


@pytest.mark.parametrize("B, c_in, c_out, H, W",
                         [(2, 5, 7, 9, 6), (3, 16, 8, 8, 8), (1, 3, 4, 1, 1), (2, 12, 10, 13, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_conv2d_outputs_and_gradients(B, c_in, c_out, H, W, bias):
    """Sizes multiple of the 4 x 4 tiles and not, a single pixel; the output split in two parts."""
    gen = torch.Generator().manual_seed(B * c_in + H)
    x = torch.randn(B, c_in, H, W, generator=gen, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(c_out, generator=gen, dtype=torch.float64).requires_grad_() if bias else None
    expected = F.conv2d(x, w, b, 1, 1)
    parts = winograd_conv3x3(x, winograd_kernel(w), b, [c_out - 2, 2])
    assert [p.shape[1] for p in parts] == [c_out - 2, 2]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in parts)
    y = torch.cat(parts, dim=1)
    torch.testing.assert_close(y, expected, rtol=1e-11, atol=1e-11)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    inputs = (x, w) if b is None else (x, w, b)
    for ours, theirs in zip(torch.autograd.grad(y, inputs, grad), torch.autograd.grad(expected, inputs, grad),
                            strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)
    with torch.no_grad():  # the in-place bias path
        torch.testing.assert_close(torch.cat(winograd_conv3x3(x, winograd_kernel(w), b, [c_out]), 1), expected)


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


def test_dtdy_layers_use_it_where_it_pays(monkeypatch):
    """Wide stride-1 3 x 3 layers on CPU in full precision: W0 and Q as one Winograd convolution (no direct
    convolution call); narrow or strided layers and autocast runs: the direct convolutions."""
    calls = []
    original = DTDYConv2d._conv
    monkeypatch.setattr(DTDYConv2d, "_conv", lambda self, *a: calls.append(1) or original(self, *a))

    def direct_calls(conv: DTDYConv2d, x: torch.Tensor, autocast: bool = False) -> int:
        calls.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            conv(x)
        return len(calls)

    wide = DTDYConv2d(WINOGRAD_MIN_CHANNELS, 16, 3, 1, 10)
    x = torch.randn(2, WINOGRAD_MIN_CHANNELS, 12, 10)
    for train in (True, False):
        wide.train(train)
        assert direct_calls(wide, x) == 0
        assert direct_calls(wide, x, autocast=True) == 2
    assert direct_calls(DTDYConv2d(WINOGRAD_MIN_CHANNELS, 16, 3, 2, 10), x) == 2
    assert direct_calls(DTDYConv2d(WINOGRAD_MIN_CHANNELS // 2, 16, 3, 1, 10), x[:, ::2]) == 2


def _case(bias: bool, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, 9, 7, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, 3, 3, generator=gen, dtype=dtype)
    return x, w, torch.randn(5, generator=gen, dtype=dtype) if bias else None


@pytest.mark.parametrize("bias", [False, True])
def test_operators_for_compiled_graphs_pass_opcheck(bias):
    """The forward and backward operators that compiled training graphs call: schema, fake (meta) outputs with
    the real ones' shapes and strides, autograd registration (torch.library.opcheck)."""
    x, w, b = _case(bias)
    u = winograd_kernel(w)
    x.requires_grad_(), u.requires_grad_()
    if b is not None:
        b.requires_grad_()
    torch.library.opcheck(torch.ops.dtdy.winograd_conv3x3.default, (x, u, b, [3, 2]))
    outputs = torch.ops.dtdy.winograd_conv3x3(x, u, b, [3, 2])
    grads = [torch.randn_like(part) for part in outputs[:-1]]
    torch.library.opcheck(torch.ops.dtdy.winograd_conv3x3_backward.default,
                          (grads, outputs[-1].detach(), u.detach(), list(x.shape), [3, 2], bias, True))


@pytest.mark.parametrize("grad", [True, False])
def test_traced_for_compile_equals_conv2d(grad):
    """Traced as torch.compile traces it (the aot_eager backend: the same graphs, without code generation):
    training through the opaque operators, inference through plain pad, unfold and crop."""
    x, w, b = _case(True)
    expected = F.conv2d(x, w, b, 1, 1)
    compiled = torch.compile(lambda x, w, b: torch.cat(winograd_conv3x3(x, winograd_kernel(w), b, [3, 2]), 1),
                             backend="aot_eager", fullgraph=True)
    inputs = [t.clone().requires_grad_(grad) for t in (x, w, b)]
    with torch.set_grad_enabled(grad):
        y = compiled(*inputs)
    torch.testing.assert_close(y, expected, rtol=1e-11, atol=1e-11)
    if grad:
        g = torch.randn_like(y)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        ours = torch.autograd.grad(y, inputs, g)
        theirs = torch.autograd.grad(F.conv2d(*leaves, 1, 1), leaves, g)
        for a, e in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("traced", [False, True])
def test_input_without_gradient(traced):
    """A first layer's input needs no gradient: the kernel and bias gradients are still those of F.conv2d, and
    no input gradient is made, eagerly or in a traced graph."""
    x, w, b = _case(True)
    w.requires_grad_(), b.requires_grad_()

    def conv(x, w, b):
        return torch.cat(winograd_conv3x3(x, winograd_kernel(w), b, [3, 2]), 1)
    fn = torch.compile(conv, backend="aot_eager", fullgraph=True) if traced else conv
    y = fn(x, w, b)
    g = torch.randn_like(y)
    for ours, theirs in zip(torch.autograd.grad(y, (w, b), g), torch.autograd.grad(F.conv2d(x, w, b, 1, 1), (w, b), g),
                            strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)
    assert x.grad is None


@pytest.mark.parametrize("traced", [False, True])
def test_an_unused_output_part_gets_zero_gradient(traced):
    """Only the first part feeds the loss: the second contributes nothing to the gradients."""
    x, w, b = _case(True)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()

    def first_part(x, w, b):
        return winograd_conv3x3(x, winograd_kernel(w), b, [3, 2])[0]
    fn = torch.compile(first_part, backend="aot_eager", fullgraph=True) if traced else first_part
    y = fn(x, w, b)
    g = torch.randn_like(y)
    expected = F.conv2d(x, w, b, 1, 1)[:, :3]
    for ours, theirs in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(expected, (x, w, b), g),
                            strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-11, atol=1e-11)
