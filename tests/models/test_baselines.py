"""The ECAPA-TDNN and CAM++ baselines: exact parameter counts of the references, shapes over lengths, eval-mode
determinism and batch independence, their building blocks against direct formulas, TorchScript, and one epoch
end to end through trainSpeakerNet.main."""

import importlib
import json

import pytest
import torch

import trainSpeakerNet
from conftest import tiny_argv
from dtdysv.data.audio import crop_samples
from models._campplus import FCM, CAMDenseBlock, segment_means
from models._ecapa import Res2Conv1d, SERes2Block
from models._pooling import ATTENTION_HIDDEN, ContextASP

BASELINES = ("ECAPA_TDNN_c512", "ECAPA_TDNN_c1024", "CAMPPlus")


def build(name: str, nOut: int, encoder_type: str, n_mels: int) -> torch.nn.Module:
    return importlib.import_module(f"models.{name}").MainModel(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                                                               log_input=True)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The counts of the reference implementations at the same settings, counted with sum(p.numel() for p in
# model.parameters()) on WeSpeaker (github.com/wenet-e2e/wespeaker, commit dfa7419, wespeaker/models/):
# ECAPA_TDNN_GLOB_c512(feat_dim=80, embed_dim=192, pooling_func="ASTP" | "TSTP" | "TAP"), ECAPA_TDNN_GLOB_c1024(...) and
# CAMPPlus(feat_dim=80, embed_dim=512 | 192, pooling_func="TSTP" | "ASTP" | "TAP"); 3D-Speaker's CAMPPlus
# (github.com/modelscope/3D-Speaker, commit 09e7806, speakerlab/models/campplus/DTDNN.py) gives the same CAM++
# counts. The papers' figures: ECAPA-TDNN 6.2M (C = 512) and 14.7M (C = 1024) are the ASP rows at 80 mels and
# nOut 192 (with the global context in the attention: without it WeSpeaker's counts are 5.8M / 14.3M); CAM++ 7.18M
# is STP at 80 mels and nOut 512.
@pytest.mark.parametrize("name, encoder_type, nOut, expected", [
    ("ECAPA_TDNN_c512", "ASP", 192, 6_190_720),
    ("ECAPA_TDNN_c512", "STP", 192, 5_402_624),
    ("ECAPA_TDNN_c512", "AVG", 192, 5_104_640),
    ("ECAPA_TDNN_c1024", "ASP", 192, 14_657_088),
    ("ECAPA_TDNN_c1024", "STP", 192, 13_868_992),
    ("CAMPPlus", "STP", 512, 7_176_224),
    ("CAMPPlus", "ASP", 512, 7_307_936),
    ("CAMPPlus", "STP", 192, 6_848_544),
    ("CAMPPlus", "AVG", 512, 6_914_080),
])
def test_parameter_counts_are_the_references(name, encoder_type, nOut, expected):
    assert n_params(build(name, nOut, encoder_type, 80)) == expected


def test_parameter_count_differences_by_hand():
    """The pooling and embedding parts, counted from the formulas: the ASP attention of ECAPA-TDNN sees
    [x; mean; std] of the 1536 aggregated channels; CAM++'s ASP sees its 512 channels; its fc has no bias."""
    d, h = 1536, ATTENTION_HIDDEN
    assert n_params(ContextASP(d, True)) == 3 * d * h + h + h * d + d
    ecapa_asp, ecapa_stp = build("ECAPA_TDNN_c512", 192, "ASP", 80), build("ECAPA_TDNN_c512", 192, "STP", 80)
    assert n_params(ecapa_asp) - n_params(ecapa_stp) == 3 * d * h + h + h * d + d
    assert n_params(ecapa_asp.bn) == 2 * 2 * d and n_params(ecapa_asp.fc) == 2 * d * 192 + 192
    cam = build("CAMPPlus", 512, "STP", 80)
    assert n_params(cam.fc) == 2 * 512 * 512 and n_params(cam.bn) == 0
    assert n_params(build("CAMPPlus", 512, "ASP", 80)) - n_params(cam) == 512 * h + h + h * 512 + 512


@pytest.fixture(scope="module")
def calibrated():
    """Each baseline at the reference settings (ECAPA's ASP, CAM++'s STP) with BatchNorm statistics of one batch,
    in eval mode."""
    models = {}
    for name, encoder_type, nOut in (("ECAPA_TDNN_c512", "ASP", 192), ("ECAPA_TDNN_c1024", "STP", 192),
                                     ("CAMPPlus", "STP", 512)):
        torch.manual_seed(0)
        model = build(name, nOut, encoder_type, 80)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 1.0
        with torch.no_grad():
            model.train()(torch.randn(4, crop_samples(60)))
        models[name] = model.eval()
    return models


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_shapes_over_lengths_and_eval_determinism_and_batch_independence(calibrated, name):
    model = calibrated[name]
    nOut = model.fc.out_features
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for samples in (crop_samples(3), 8000, crop_samples(57), crop_samples(230)):  # CAM++: 2 segments at 230
            wave = torch.randn(2, samples, generator=gen)
            out = model(wave)
            assert out.shape == (2, nOut) and torch.isfinite(out).all()
            assert torch.equal(model(wave), out)  # eval mode is deterministic
            # nor does it mix the batch (up to float noise of the convolutions, which the final BatchNorm of CAM++
            # scales by up to 1 / sqrt(min running_var) ~ 40 with one calibration batch)
            torch.testing.assert_close(model(wave[1:]), out[1:], rtol=1e-4, atol=3e-5 * out.abs().max().item())


def test_time_axis_through_the_trunks(calibrated):
    """ECAPA-TDNN keeps the frame rate; CAM++ halves it in its TDNN layer and keeps ceil(80 / 8) = 10 frequency
    rows in its 2-D head (102 frames: 51)."""
    seen = {}
    ecapa, cam = calibrated["ECAPA_TDNN_c512"], calibrated["CAMPPlus"]
    for model, layers in ((ecapa, ("layer4", "mfa")), (cam, ("head", "block3", "out_nonlinear"))):
        handles = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.update({n: tuple(o.shape)}))
                   for n in layers]
        with torch.no_grad():
            model(torch.randn(1, crop_samples(100)))
        for h in handles:
            h.remove()
    assert seen == {"layer4": (1, 512, 102), "mfa": (1, 1536, 102), "head": (1, 32, 10, 102),
                    "block3": (1, 512 + 16 * 32, 51), "out_nonlinear": (1, 512, 51)}


@pytest.mark.slow
@pytest.mark.parametrize("name, encoder_type", [("ECAPA_TDNN_c512", "STP"), ("CAMPPlus", "ASP")])
def test_the_other_pooling_trains_every_parameter(name, encoder_type):
    """The pooling the plugin contract test does not use, at 80 mels: every parameter gets a non-zero gradient."""
    torch.manual_seed(0)
    model = build(name, 16, encoder_type, 80)
    (model(torch.randn(2, crop_samples(30))) ** 2).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_feature_augment_runs_in_training_only():
    model = build("CAMPPlus", 8, "STP", 40)
    calls = []
    model.feature_augment = lambda feats: calls.append(feats.shape) or torch.zeros_like(feats)
    wave = torch.randn(2, crop_samples(20))
    model.train()(wave)
    assert calls == [(2, 40, 22)]
    with torch.no_grad():
        model.eval()(wave)
    assert len(calls) == 1


def test_context_asp_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9)
    pool = ContextASP(5, True)
    mean, std = x.mean(2, keepdim=True), x.std(2, unbiased=False, keepdim=True)
    x_in = torch.cat([x, mean.expand_as(x), std.expand_as(x)], 1)
    e = torch.einsum("dh,bht->bdt", pool.linear2.weight[..., 0],
                     torch.tanh(torch.einsum("hd,bdt->bht", pool.linear1.weight[..., 0], x_in)
                                + pool.linear1.bias[:, None])) + pool.linear2.bias[:, None]
    w = torch.softmax(e, dim=2)
    mu = (w * x).sum(2)
    sigma = ((w * x * x).sum(2) - mu ** 2).sqrt()
    torch.testing.assert_close(pool(x), torch.cat([mu, sigma], 1))
    local = ContextASP(5, False)
    assert local.linear1.in_channels == 5 and pool.linear1.in_channels == 15 and local(x).shape == (2, 10)


def test_segment_means_of_cam():
    x = torch.randn(2, 3, 250)
    out = segment_means(x, 100)
    for start in (0, 100, 200):  # the last segment is 50 frames long, and its mean is over those 50
        seg = x[..., start:start + 100]
        torch.testing.assert_close(out[..., start:start + 100], seg.mean(-1, keepdim=True).expand_as(seg))
    assert out.shape == x.shape


def test_res2_conv_passes_the_last_group_and_chains_the_others():
    torch.manual_seed(0)
    res2 = Res2Conv1d(16, 3, 2, 4).eval()
    x = torch.randn(1, 16, 12)
    with torch.no_grad():
        out = res2(x)
        g = x.split(4, dim=1)
        y0 = res2.branches[0](g[0])
        y1 = res2.branches[1](g[1] + y0)
        y2 = res2.branches[2](g[2] + y1)
    torch.testing.assert_close(out, torch.cat([y0, y1, y2, g[3]], 1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("block, channels", [(lambda: SERes2Block(64, 3, 3), 64), (lambda: FCM(40), 1),
                                             (lambda: CAMDenseBlock(64, 2, 2), 64)])
def test_building_blocks_script_with_a_free_time_axis(block, channels):
    """TorchScript compiles the blocks (no data-dependent Python control flow), and the scripted block agrees with
    the eager one at two lengths, one across a CAM segment boundary."""
    torch.manual_seed(0)
    module = block().eval()
    scripted = torch.jit.script(module)
    with torch.no_grad():
        for frames in (7, 130):
            x = torch.randn(2, 40 if channels == 1 else channels, frames)
            torch.testing.assert_close(scripted(x), module(x))


def test_unsupported_pooling_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'SAP'.*CAM\+\+.*valid: ASP, STP, AVG"):
        build("CAMPPlus", 8, "SAP", 40)
    with pytest.raises(ValueError, match=r"'SAP'.*ECAPA-TDNN.*valid: ASP, STP, AVG"):
        build("ECAPA_TDNN_c512", 8, "SAP", 40)


@pytest.mark.parametrize("name, encoder_type", [("ECAPA_TDNN_c512", "ASP"), ("ECAPA_TDNN_c1024", "STP"),
                                                ("CAMPPlus", "STP")])
@pytest.mark.slow
def test_one_epoch_trains_and_evaluates_end_to_end(corpus, tmp_path, name, encoder_type):
    """Through trainSpeakerNet.main on the tiny demo corpus (two steps of 3 speakers x 2 crops), with SpecAugment
    through the feature_augment hook; then the evaluation of every trial."""
    argv = tiny_argv(corpus, tmp_path, "--model", name, "--encoder_type", encoder_type, "--max_epoch", "1",
                     "--max_seg_per_spk", "2", "--eval_frames", "40", "--num_eval", "1", "--spec_augment")
    assert trainSpeakerNet.main(argv) == 0
    metrics = json.loads((tmp_path / "result/test_list/metrics.json").read_text())["variants"]["raw"]
    assert metrics["n_trials"] == len((corpus / "test_list.txt").read_text().splitlines())
    assert 0.0 <= metrics["eer_percent"] <= 100.0
    assert "epoch 1: loss" in (tmp_path / "result/train.log").read_text()
    assert (tmp_path / "model/model000000001.model").is_file()
