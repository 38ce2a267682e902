"""The DTDY convolution: the decomposition W(t) = W0 + P Phi(t) Q^T, the formulas for L and H, and agreement
with the straightforward formulation of tests/reference_dtdy.py in train and eval mode."""

import pytest
import torch
import torch.nn.functional as F

from models._dtdy import DTDYConv2d, latent_size, phi_hidden_size
from tests.reference_dtdy import ReferenceDTDYConv2d, reference_conv_from

# (C_in, C_out, k, stride, F, T): latent sizes L = 5, 6, 8, 13, 22, strides 1 and 2, a 1 x 1 shortcut, and a
# 128-channel layer
CASES = [(8, 8, 3, 1, 10, 12), (8, 10, 3, 2, 9, 11), (16, 16, 3, 1, 6, 9), (8, 16, 1, 2, 10, 12),
         (32, 64, 3, 2, 8, 7), (128, 120, 3, 1, 6, 9)]


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, BatchNorms with random affine and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * 0.5)


def hsig(v):
    return torch.clamp(v + 3, 0, 6) / 3


def phi_of(conv: DTDYConv2d, x: torch.Tensor) -> torch.Tensor:
    """Phi written out from the paper's description: (B, C, T, F) -> (B, L, L, T'), [b, d, j, t]."""
    ph, k, s = conv.phi, conv.kernel_size, conv.stride
    u = torch.cat([x.mean(dim=3), x.mean(dim=1).transpose(1, 2)], dim=1)  # channel stats, frequency stats
    h = F.conv1d(u, ph.conv_in.weight, ph.conv_in.bias, stride=s, padding=(k - 1) // 2)
    h = h * hsig(F.conv1d(h, ph.gate.weight))
    phi = hsig(F.conv1d(h, ph.conv_out.weight, ph.conv_out.bias, padding=1))
    return phi.view(x.shape[0], conv.latent, conv.latent, -1)


def bn_scale_shift(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@pytest.mark.parametrize("c_in, c_out, k, stride, freq, frames", CASES)
def test_output_is_a_per_time_bin_convolution_with_w_of_t(c_in, c_out, k, stride, freq, frames):
    """Fold BN_a, Phi(t), BN_b, the residual and P into one C_out x C_in x k x k kernel (and bias) per output
    time bin, convolve each time bin with its own kernel, and match the module."""
    conv = DTDYConv2d(c_in, c_out, k, stride, freq).double()
    randomise(conv, seed=c_in + c_out + k)
    conv.eval()
    x = torch.randn(2, c_in, frames, freq, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
        phi = phi_of(conv, x)  # (B, L, L, T')
        a, c_a = bn_scale_shift(conv.bn_latent)
        s, c_b = bn_scale_shift(conv.bn_mix)
        q = conv.q.reshape(conv.latent, -1)  # (L, C_in k k)
        eye = torch.eye(conv.latent, dtype=x.dtype)
        expected = torch.empty_like(y)
        for b in range(x.shape[0]):
            for t in range(y.shape[2]):
                mix = s[:, None] * phi[b, :, :, t] + eye  # z' = (diag(s) Phi + I) z + c_b
                w_t = conv.w0 + (conv.p @ mix @ (a[:, None] * q)).view_as(conv.w0)  # W0 + P Phi' diag(a) Q
                bias_t = conv.p @ (mix @ c_a + c_b)
                out = F.conv2d(x[b:b + 1], w_t, bias_t, stride=stride, padding=(k - 1) // 2)
                expected[b, :, t] = out[0, :, t]
    assert y.shape == (2, c_out, (frames - 1) // stride + 1, (freq - 1) // stride + 1)
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("c_in, c_out, k, stride, freq, frames", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_matches_the_straightforward_formulation(c_in, c_out, k, stride, freq, frames, train):
    conv = DTDYConv2d(c_in, c_out, k, stride, freq).double()
    randomise(conv, seed=7)
    ref = reference_conv_from(conv).double()
    conv.train(train)
    ref.train(train)
    x = torch.randn(3, c_in, freq, frames, dtype=torch.float64)  # reference layout (B, C, F, T)
    x_ours = x.transpose(2, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_ours, y_ref = conv(x_ours), ref(x_ref)
    torch.testing.assert_close(y_ours.transpose(2, 3), y_ref, rtol=1e-10, atol=1e-10)
    if not train:
        return
    grad = torch.randn_like(y_ref)
    y_ours.backward(grad.transpose(2, 3))
    y_ref.backward(grad)
    close = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_ours.grad.transpose(2, 3), x_ref.grad, **close)
    torch.testing.assert_close(conv.w0.grad.transpose(2, 3), ref.conv.weight.grad, **close)
    torch.testing.assert_close(conv.q.grad.transpose(2, 3), ref.q.weight.grad, **close)
    torch.testing.assert_close(conv.p.grad, ref.p.weight.grad.view_as(conv.p), **close)
    torch.testing.assert_close(conv.phi.conv_out.weight.grad, ref.fc_phi.fc2.weight.grad, **close)
    torch.testing.assert_close(conv.bn_mix.weight.grad, ref.bn2.weight.grad, **close)
    for ours, theirs in ((conv.bn_latent, ref.bn1), (conv.bn_mix, ref.bn2)):  # running statistics
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **close)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **close)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1


@pytest.mark.parametrize("c_in", [8, 128])
def test_channels_last_and_contiguous_inputs_agree(c_in):
    conv = DTDYConv2d(c_in, 16, 3, 1, 10).double()  # fp64: the two layouts run different conv kernels
    randomise(conv, seed=3)
    x = torch.randn(2, c_in, 12, 10, dtype=torch.float64)
    for train in (True, False):
        conv.train(train)
        torch.testing.assert_close(conv(x), conv(x.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("c_in, c_out, latent, hidden", [(32, 32, 11, 15), (32, 64, 13, 21), (64, 64, 16, 32),
                                                         (64, 128, 19, 45), (128, 128, 22, 60),
                                                         (128, 256, 27, 91), (256, 256, 32, 128)])
def test_latent_and_hidden_sizes(c_in, c_out, latent, hidden):
    assert latent_size(c_in, c_out) == latent
    assert phi_hidden_size(latent) == hidden
    conv = DTDYConv2d(c_in, c_out, 3, 1, 8)
    assert conv.q.shape == (latent, c_in, 3, 3) and conv.p.shape == (c_out, latent)
    assert conv.phi.conv_in.weight.shape == (hidden, c_in + 8, 3)
    assert conv.phi.conv_out.weight.shape == (latent * latent, hidden, 3)


def test_parameter_count_formula():
    c_in, c_out, freq, k = 32, 64, 32, 3
    L, H = 13, 21
    expected = (c_out * c_in * k * k + L * c_in * k * k + c_out * L + 4 * L
                + (c_in + freq) * H * k + H + H * H + 3 * H * L * L + L * L)
    assert sum(p.numel() for p in DTDYConv2d(c_in, c_out, k, 2, freq).parameters()) == expected


def test_official_initialisation():
    torch.manual_seed(0)
    conv = DTDYConv2d(64, 128, 3, 1, 16)
    fan_out = 128 * 9
    assert abs(conv.w0.std().item() - (2 / fan_out) ** 0.5) < 0.05 * (2 / fan_out) ** 0.5
    for bn in (conv.bn_latent, conv.bn_mix):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(conv.phi.conv_in.bias == 0) and torch.all(conv.phi.conv_out.bias == 0)


def test_phi_lies_in_zero_two_and_depends_on_time():
    conv = DTDYConv2d(8, 8, 3, 1, 10)
    randomise(conv, seed=1)
    phi = conv.phi(torch.randn(2, 8, 12, 10) * 3)  # (B, T, L, L)
    assert phi.shape == (2, 12, 5, 5)
    assert phi.min() >= 0 and phi.max() <= 2
    assert not torch.allclose(phi[:, 0], phi[:, 5])


def test_reference_layer_has_the_official_names():
    names = set(ReferenceDTDYConv2d(32, 32, 3, 1, 32).state_dict())
    assert {"conv.weight", "q.weight", "p.weight", "bn1.running_var", "bn2.weight", "fc_phi.fc1.weight",
            "fc_phi.semodule.fc.0.weight", "fc_phi.fc2.bias"} <= names


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd kernel_size"):
        DTDYConv2d(8, 8, 2, 1, 10)


@pytest.mark.parametrize("c_in, stride", [(8, 2), (128, 1)])
def test_layer_traces_under_torch_compile(c_in, stride):
    """--compile: dynamo traces the layer in one graph, training and inference alike."""
    torch._dynamo.reset()
    conv = DTDYConv2d(c_in, 16, 3, stride, 10)
    randomise(conv, seed=4)
    x = torch.randn(2, c_in, 12, 10).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(conv, backend="eager", fullgraph=True)
    for train in (True, False):
        conv.train(train)
        torch.testing.assert_close(compiled(x), conv(x))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), conv(x))


def test_layer_and_block_script_with_torchscript():
    """The readable model is what export sees: TorchScript compiles a DTDY layer and a block, outputs equal."""
    from models._resnet import BasicBlock

    block = BasicBlock(8, 16, 2, 10, dynamic=True)
    randomise(block, seed=2)
    block.eval()
    x = torch.randn(2, 8, 12, 10)
    with torch.no_grad():
        for module in (block.conv1, block):
            torch.testing.assert_close(torch.jit.script(module)(x), module(x))
