"""Every model plugin against the contract of models/__init__.py, exact parameter counts, front-end and pooling."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from dtdysv.data.audio import crop_samples
from models._dtdy import DTDYConv2d
from models._frontend import log_mel, make_mel_spectrogram
from models._pooling import ASP, AVG, BASELINE_POOLINGS, POOLINGS, SAP, STP, make_pooling

MODELS_DIR = ROOT / "models"
PLUGINS = sorted(p.stem for p in MODELS_DIR.glob("*.py") if not p.stem.startswith("_"))
WAVE_SAMPLES = crop_samples(50)  # 0.5 s
SHORT_SAMPLES = crop_samples(12)  # 0.12 s, for bfloat16 (slow convolutions on CPUs without bf16 units)
# --encoder_type values of each plugin: the ResNets take every pooling of models/_pooling.py, the 1-D baselines
# their own two (ECAPA-TDNN's and CAM++'s attentive statistics pooling, and statistics pooling).
BASELINES = ("ECAPA_TDNN_c512", "ECAPA_TDNN_c1024", "CAMPPlus")


def encoder_types(name: str) -> tuple[str, ...]:
    return BASELINE_POOLINGS if name in BASELINES else tuple(POOLINGS)


def build(name: str, nOut: int = 24, encoder_type: str = "ASP", n_mels: int = 64, log_input: bool = True):
    return importlib.import_module(f"models.{name}").MainModel(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels,
                                                               log_input=log_input)


def calibrate_batchnorm(model: torch.nn.Module, wave: torch.Tensor) -> None:
    """Running statistics from one batch (as after training), so that eval mode is well scaled."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(wave)


def test_the_four_variants_and_the_baselines_are_discovered():
    assert {"DTDY_ResNet34_half", "DTDY_ResNet34_quarter", "ResNet34_half", "ResNet34_quarter"} <= set(PLUGINS)
    assert set(BASELINES) <= set(PLUGINS)


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_contract(name):
    torch.manual_seed(0)
    model = build(name, nOut=24, encoder_type="ASP", n_mels=40)
    wave = torch.randn(2, WAVE_SAMPLES)
    out = model(wave)
    assert out.shape == (2, 24) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    (out ** 2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    dead = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not dead, f"parameters with an all-zero gradient: {dead}"


@pytest.mark.slow
@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_runs_under_bfloat16_autocast(name):
    torch.manual_seed(0)
    model = build(name, nOut=16, encoder_type="SAP" if "SAP" in encoder_types(name) else "STP", n_mels=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, SHORT_SAMPLES))
    assert out.shape == (2, 16) and torch.isfinite(out.float()).all()
    model.eval()  # the folded eval path of DTDY too
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(torch.randn(2, SHORT_SAMPLES)).float()).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DTDY_ResNet34_quarter", "ResNet34_quarter"])
def test_eval_embedding_does_not_depend_on_the_batch(name):
    torch.manual_seed(0)
    model = build(name, encoder_type="ASP", n_mels=40)
    wave = torch.randn(3, crop_samples(30))
    calibrate_batchnorm(model, torch.randn(4, crop_samples(30)))
    model.eval()
    with torch.no_grad():
        together = model(wave)
        alone = model(wave[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, encoder_type, n_mels, expected", [
    ("DTDY_ResNet34_half", "AVG", 64, 11_991_232),
    ("DTDY_ResNet34_half", "SAP", 64, 12_517_952),
    ("DTDY_ResNet34_half", "ASP", 64, 13_566_528),
    ("ResNet34_half", "AVG", 64, 6_373_728),
    ("ResNet34_half", "ASP", 64, 7_949_024),
    ("DTDY_ResNet34_quarter", "AVG", 64, 3_332_344),
    ("DTDY_ResNet34_quarter", "SAP", 40, 3_289_590),
])
def test_exact_parameter_counts(name, encoder_type, n_mels, expected):
    model = build(name, nOut=512, encoder_type=encoder_type, n_mels=n_mels)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_dtdy_everywhere_in_the_blocks_and_nowhere_in_the_static_twin():
    dtdy = build("DTDY_ResNet34_half")
    convs = [n for n, m in dtdy.named_modules() if isinstance(m, DTDYConv2d)]
    assert len(convs) == 2 * (3 + 4 + 6 + 3) + 3  # every block conv and the three projection shortcuts
    assert [len(getattr(dtdy, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert isinstance(dtdy.conv1, torch.nn.Conv2d)  # the stem stays static
    static = build("ResNet34_half")
    assert not any(isinstance(m, DTDYConv2d) for m in static.modules())
    assert [n for n, _ in dtdy.named_parameters() if n.startswith("layer1.0.bn")] == \
        [n for n, _ in static.named_parameters() if n.startswith("layer1.0.bn")]


@pytest.mark.parametrize("name", PLUGINS)
def test_unknown_encoder_type_lists_the_valid_ones(name):
    with pytest.raises(ValueError) as err:
        build(name, encoder_type="XYZ")
    assert "'XYZ'" in str(err.value)
    for valid in encoder_types(name):
        assert valid in str(err.value)
    for other in set(POOLINGS) - set(encoder_types(name)):
        assert other not in str(err.value)


def test_frontend_is_the_papers():
    fb = make_mel_spectrogram(64)
    assert torch.equal(fb.spectrogram.window, torch.hamming_window(400))
    assert fb.spectrogram.n_fft == 512 and fb.spectrogram.hop_length == 160
    assert fb.mel_scale.fb.shape == (257, 64)
    assert crop_samples(200) == 32_240
    wave = torch.randn(3, crop_samples(200))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = log_mel(fb, wave.requires_grad_(), log_input=True)
    assert feats.shape == (3, 64, 202) and feats.dtype == torch.float32 and not feats.requires_grad
    torch.testing.assert_close(feats.mean(dim=2), torch.zeros(3, 64), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(dim=2, unbiased=False), torch.ones(3, 64), atol=1e-3, rtol=0)
    # the same maths by hand: power mel spectrogram, +1e-6, log, per-bin normalisation over time
    spec = torch.stft(wave.detach(), 512, 160, 400, torch.hamming_window(400), return_complex=True).abs() ** 2
    mel = (fb.mel_scale.fb.t() @ spec + 1e-6).log()
    by_hand = (mel - mel.mean(2, keepdim=True)) / torch.sqrt(mel.var(2, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(feats, by_hand, rtol=1e-3, atol=1e-3)
    linear = log_mel(fb, wave.detach(), log_input=False)
    assert not torch.allclose(linear, feats)


def test_model_state_carries_the_frontend_buffers():
    keys = build("DTDY_ResNet34_quarter").state_dict()
    assert keys["torchfb.spectrogram.window"].shape == (400,)
    assert keys["torchfb.mel_scale.fb"].shape == (257, 64)


def test_pooling_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7)
    sap, asp = SAP(6).eval(), ASP(6).eval()
    asp.load_state_dict(sap.state_dict())
    att = sap.attention
    hidden = F.relu(F.batch_norm(F.conv1d(x, att[0].weight, att[0].bias), att[1].running_mean,
                                 att[1].running_var, att[1].weight, att[1].bias, False))
    w = torch.softmax(F.conv1d(hidden, att[3].weight, att[3].bias), dim=2)
    mu = (x * w).sum(2)
    torch.testing.assert_close(sap(x), mu)
    sigma = torch.sqrt(((x ** 2) * w).sum(2) - mu ** 2)
    torch.testing.assert_close(asp(x), torch.cat([mu, sigma], 1))
    torch.testing.assert_close(AVG(6)(x), x.mean(2))
    torch.testing.assert_close(STP(6)(x), torch.cat([x.mean(2), x.std(2, unbiased=False)], 1))
    assert [make_pooling(t, 6).out_dim for t in ("SAP", "ASP", "AVG", "STP")] == [6, 12, 6, 12]


def test_time_and_frequency_axes_are_not_mixed_up():
    """Cropping the waveform changes only the time extent; the pooled dimension depends on n_mels alone."""
    model = build("DTDY_ResNet34_quarter", encoder_type="AVG", n_mels=40)
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    model.eval()(torch.randn(1, crop_samples(100)))
    assert seen["shape"] == (1, 128, 26, 5)  # (B, C3, T', F'): 102 frames -> 26, 40 mels -> 20 -> 5
