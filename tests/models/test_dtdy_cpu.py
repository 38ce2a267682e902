"""The CPU inference path of models/_dtdy_cpu.py against the readable model: the same outputs for both DTDY models
and a static twin, and nothing of it left once the switch is off."""

import pytest
import torch
import torch.nn.functional as F
from test_dtdy import randomise

from models._dtdy_cpu import _conv1d_rows, _rows_kernel, fast_cpu_inference
from models._resnet import BasicBlock


def calibrated(name: str, wave: torch.Tensor) -> torch.nn.Module:
    """A model with eval-mode BatchNorm statistics of one batch (random weights, init statistics would blow up)."""
    torch.manual_seed(0)
    model = __import__(f"models.{name}", fromlist=["MainModel"]).MainModel(nOut=32, encoder_type="ASP", n_mels=40,
                                                                           log_input=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    with torch.no_grad():
        model.train()(wave)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DTDY_ResNet34_quarter", "DTDY_ResNet34_half", "ResNet34_quarter"])
def test_fast_path_equals_the_readable_model(name):
    """Embeddings of several crop lengths (frame counts odd and even)."""
    model = calibrated(name, torch.randn(2, 6400))
    for samples in (4000, 6400, 9120):
        wave = torch.randn(2, samples)
        with torch.no_grad():
            expected = model(wave)
            with fast_cpu_inference(model):
                fast = model(wave)
        assert not torch.equal(fast, expected)  # it ran: the folds change fp32 rounding
        torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("c_in, c_out, stride", [(8, 8, 1), (8, 16, 2), (128, 128, 1), (128, 120, 1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_block_equals_the_readable_block(c_in, c_out, stride, channels_last):
    """Blocks with latent sizes L = 8, 11, 22, a 1 x 1 shortcut, a 128-channel layer; both input memory layouts."""
    block = BasicBlock(c_in, c_out, stride, 10, dynamic=True).double().eval()
    randomise(block, seed=c_in + c_out)
    x = torch.randn(2, c_in, 13, 10, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
        with fast_cpu_inference(block):
            fast = block(x)
    torch.testing.assert_close(fast, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


def test_switch_off_is_the_readable_model():
    """Outside the with block, and inside it with autograd or in training, the class's forward runs, bit for bit;
    no operator is registered for the path."""
    block = BasicBlock(8, 16, 2, 10, dynamic=True).eval()
    randomise(block, seed=1)
    x = torch.randn(2, 8, 12, 10)
    with torch.no_grad():
        readable = block(x)
    with fast_cpu_inference(block):
        assert "forward" in vars(block)
        torch.testing.assert_close(block(x), readable, rtol=0, atol=0)  # grad enabled: readable
        with torch.no_grad():
            assert not torch.equal(block(x), readable)  # the folded path
    assert "forward" not in vars(block)
    with torch.no_grad():
        torch.testing.assert_close(block(x), readable, rtol=0, atol=0)
    with pytest.raises((AttributeError, RuntimeError)):
        torch.ops.dtdy.winograd_conv3x3  # noqa: B018


def test_training_inside_the_block_drops_the_folded_operands():
    block = BasicBlock(8, 16, 2, 10, dynamic=True)
    randomise(block, seed=2)
    x = torch.randn(2, 8, 12, 10)
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    with fast_cpu_inference(block):
        with torch.no_grad():
            block.eval()(x)
        block.train()(x).square().mean().backward()
        opt.step()
        with torch.no_grad():
            fast = block.eval()(x)
    with torch.no_grad():
        torch.testing.assert_close(fast, block(x))


def test_a_hooked_conv_sees_its_own_output():
    """A forward hook on a block's conv (speaker activation maps) gets the conv's output, not a folded one."""
    block = BasicBlock(8, 16, 2, 10, dynamic=True).eval()
    randomise(block, seed=3)
    x = torch.randn(2, 8, 12, 10)
    seen = []
    block.conv1.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad(), fast_cpu_inference(block):
        block(x)
        assert len(seen) == 1
        torch.testing.assert_close(seen[0], block.conv1(x))


def test_a_model_off_the_cpu_is_refused():
    with pytest.raises(ValueError, match="model on the CPU"):
        with fast_cpu_inference(BasicBlock(8, 8, 1, 10, dynamic=True).to("meta")):
            pass


@pytest.mark.parametrize("d, out, k, stride", [(18, 3, 3, 1), (18, 3, 3, 2), (3, 25, 3, 1), (6, 9, 1, 2)])
def test_time_major_conv1d_rows_equal_conv1d(d, out, k, stride):
    """Both formulations of _conv1d_rows (fewer outputs than inputs: shifted products; else: windows)."""
    u = torch.randn(2, 11, d, dtype=torch.float64)
    conv = torch.nn.Conv1d(d, out, k, stride, (k - 1) // 2).double()
    expected = F.conv1d(u.transpose(1, 2), conv.weight, conv.bias, stride, (k - 1) // 2).transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(_conv1d_rows(u, _rows_kernel(conv.weight), conv.bias, k, stride), expected)
