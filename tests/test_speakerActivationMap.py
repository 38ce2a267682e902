"""Speaker Activation Map: gradients against finite differences, the log-mel grid, the frequency axis, a network
trained to use one band, and the command line for the DTDY and static models."""

import matplotlib.image
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from config import Config, parse_args
from dtdysv import sam
from dtdysv.data.audio import SAMPLE_RATE
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime import plugins
from dtdysv.runtime import setup as runtime
from models._frontend import make_mel_spectrogram
from speakerActivationMap import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """The model interface in miniature: wave (B, samples) -> log-mel -> conv block -> per-bin gain -> strided conv
    block -> mean over time -> embedding (B, n_out). ``freq_major`` runs the trunk on (B, C, F, T) instead of
    (B, C, T, F). Plain log-mel (no per-utterance normalisation), so that a steady tone stays visible."""

    def __init__(self, n_mels: int = 32, channels: int = 8, n_out: int = 16, freq_major: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.freq_major = freq_major
        self.dtype = dtype
        self.torchfb = make_mel_spectrogram(n_mels)
        stride = (2, 1) if freq_major else (1, 2)
        self.block1 = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True))  # as in ResNets
        self.gain = nn.Parameter(torch.ones(n_mels))
        self.block2 = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=stride, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels * ((n_mels + 1) // 2), n_out)
        self.to(dtype)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = ((self.torchfb(wave.float()) + 1e-6).log() / 5 + 1).to(self.dtype)  # (B, F, T)
        return x.unsqueeze(1) if self.freq_major else x.transpose(1, 2).unsqueeze(1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.gain.view(-1, 1) if self.freq_major else self.gain
        x = self.block2(self.block1(x) * gain)
        x = x.mean(dim=3) if self.freq_major else x.mean(dim=2)  # (B, C, F')
        return self.fc(x.flatten(1))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.features(wave))


def freq_major_twin(net: TinyNet) -> TinyNet:
    """The same network computing on transposed feature maps (kernels transposed)."""
    twin = TinyNet(net.torchfb.n_mels, net.block1[0].out_channels, net.fc.out_features, True, net.dtype)
    state = {k: v.transpose(-1, -2) if v.dim() == 4 else v for k, v in net.state_dict().items()}
    twin.load_state_dict(state)
    return twin


def noise(seconds: float, seed: int) -> torch.Tensor:
    return torch.randn(int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed)) * 0.1


# --- gradients and maps -------------------------------------------------------------------------------------------

def finite_difference_gradient(net: nn.Module, layer: str, waves: tuple[torch.Tensor, torch.Tensor], side: int,
                               eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, ds/dA) of utterance ``side`` by central differences: every +/- eps one-hot perturbation in one batch."""
    module = sam.find_layer(net, layer)
    with torch.no_grad():
        other = net(waves[1 - side][None])
        captured = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o[0].clone()))
        net(waves[side][None])
        handle.remove()
        act = captured[-1]
        n = act.numel()
        delta = torch.cat([torch.eye(n, dtype=act.dtype), -torch.eye(n, dtype=act.dtype)]).view(2 * n, *act.shape)
        handle = module.register_forward_hook(lambda m, i, o: o + eps * delta)
        emb = net(waves[side][None].expand(2 * n, -1))
        handle.remove()
    scores = F.cosine_similarity(emb, other, dim=1)
    return act, ((scores[:n] - scores[n:]) / (2 * eps)).view(act.shape)


@pytest.mark.parametrize("layer", ["block1.0", "block1", "block2"])  # block1.0: an in-place ReLU follows
def test_gradients_weights_and_map_match_finite_differences(layer):
    torch.manual_seed(3)
    net = TinyNet(n_mels=16, channels=3, n_out=8, dtype=torch.float64).eval()
    with torch.no_grad():
        net.gain.uniform_(0.5, 1.5)
    enroll, test = noise(0.15, 1), noise(0.2, 2)  # 16 and 21 frames
    score, grads = sam.layer_gradients(net, enroll, test, [layer])
    with torch.no_grad():
        assert score == pytest.approx(float(F.cosine_similarity(net(enroll[None]), net(test[None]))), abs=1e-12)
    cams = []
    for side in (0, 1):
        act_fd, grad_fd = finite_difference_gradient(net, layer, (enroll, test), side)
        act, grad = grads[layer][side]
        assert act.shape == grad.shape == act_fd.shape
        torch.testing.assert_close(act, act_fd, rtol=0, atol=0)
        torch.testing.assert_close(grad, grad_fd, rtol=1e-5, atol=1e-9)
        alpha, cam = sam.grad_cam(act, grad)
        alpha_fd = grad_fd.mean(dim=(1, 2))
        torch.testing.assert_close(alpha, alpha_fd, rtol=1e-5, atol=1e-10)
        cam_fd = (alpha_fd[:, None, None] * act_fd).sum(dim=0).clamp(min=0)  # (T', F')
        torch.testing.assert_close(cam, cam_fd, rtol=1e-5, atol=1e-10)
        cams.append(cam)
    if layer != "block2":  # full resolution: the map on the log-mel grid is the map itself, transposed, / max
        result = sam.speaker_activation_maps(net, enroll, test, [layer])
        assert result.enroll_maps.shape == (1, 16, 16) and result.test_maps.shape == (1, 16, 21)
        for maps, cam in zip((result.enroll_maps, result.test_maps), cams, strict=True):
            assert cam.max() > 0
            np.testing.assert_allclose(maps[0], (cam / cam.max()).T.numpy(), rtol=1e-6, atol=1e-7)
        assert result.score == pytest.approx(score)


@pytest.mark.parametrize("name", plugins.available("model"))
def test_every_model_gives_maps_on_the_log_mel_grid_in_0_1(name):
    torch.manual_seed(0)
    model = plugins.build("model", name, Config(model=name, n_mels=40, nOut=16, encoder_type="AVG"))
    calibrate_batchnorm(model)
    enroll, test = noise(0.5, 1), noise(0.73, 2)
    layers = sam.map_layers(model)
    if name.startswith(("ResNet34", "DTDY_ResNet34")):
        assert layers == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4"]
    assert layers
    result = sam.speaker_activation_maps(model, enroll, test, layers)
    n = len(layers)
    assert result.enroll_maps.shape == (n, 40, 1 + len(enroll) // 160)
    assert result.test_maps.shape == (n, 40, 1 + len(test) // 160) == (n,) + result.test_logmel.shape
    for maps in (result.enroll_maps, result.test_maps):
        assert np.isfinite(maps).all() and maps.min() >= 0.0
        assert np.allclose(maps.max(axis=(1, 2)), 1.0) or not maps.any()
    assert -1.0 <= result.score <= 1.0


def test_time_axis_is_found_whatever_the_layout():
    torch.manual_seed(1)
    net = TinyNet(n_mels=24, channels=4, n_out=8).eval()
    twin = freq_major_twin(net).eval()
    assert sam.layer_time_axes(net, ["block1", "block2"]) == {"block1": 0, "block2": 0}
    assert sam.layer_time_axes(twin, ["block1", "block2"]) == {"block1": 1, "block2": 1}
    enroll, test = noise(0.3, 4), noise(0.25, 5)
    a = sam.speaker_activation_maps(net, enroll, test, ["block1", "block2"])
    b = sam.speaker_activation_maps(twin, enroll, test, ["block1", "block2"])
    assert a.score == pytest.approx(b.score, abs=1e-5)
    assert a.test_maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(a.test_maps, b.test_maps, atol=1e-4)
    np.testing.assert_allclose(a.enroll_maps, b.enroll_maps, atol=1e-4)


def test_strided_maps_land_on_the_input_bins_they_are_centred_on():
    cam = torch.zeros(5, 4, dtype=torch.float64)  # (T', F'): time stride 4 of 20 frames, frequency stride 8 of 32
    cam[3, 2] = 2.0
    grid = sam.to_logmel_grid(cam, 0, 32, 20)  # cell (t'=3, f'=2) is centred on frame 12, mel bin 16
    assert grid.shape == (32, 20)
    assert grid[16, 12] == 1.0 and grid.max() == 1.0
    assert grid[16, 13] == 0.75 and grid[16, 14] == 0.5 and grid[12, 12] == 0.5 and grid[8, 12] == 0.0
    assert grid[16, 16] == 0.0 and grid[16, 8] == 0.0
    torch.testing.assert_close(sam.to_logmel_grid(cam.T, 1, 32, 20), grid)  # frequency-major layout
    flat = sam.to_logmel_grid(torch.tensor([0.0, 1.0, 4.0]), 0, 8, 6)  # no frequency axis: every bin alike
    assert flat.shape == (8, 6) and torch.equal(flat[0], flat[7])
    torch.testing.assert_close(flat[0], torch.tensor([0.0, 0.125, 0.25, 0.625, 1.0, 1.0]))
    assert not sam.to_logmel_grid(torch.zeros(3, 2), 0, 8, 6).any()


@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
@pytest.mark.parametrize("n_mels", [40, 64])
def test_mel_centre_frequencies_are_the_filterbank_peaks(n_mels, mel_scale):
    fine = torchaudio.functional.melscale_fbanks(16001, 0.0, 8000.0, n_mels, SAMPLE_RATE, None, mel_scale)
    peaks_hz = fine.argmax(dim=0).numpy() * 0.5  # 0.5 Hz resolution
    centres = sam.mel_centre_frequencies(n_mels, SAMPLE_RATE, 0.0, 8000.0, mel_scale)
    assert centres.shape == (n_mels,)
    np.testing.assert_allclose(centres, peaks_hz, atol=0.5)
    model_centres = sam.model_mel_frequencies(TinyNet(n_mels=n_mels))
    if mel_scale == "htk":
        np.testing.assert_allclose(model_centres, centres)


# --- a network that listens to one band ----------------------------------------------------------------------------

CUE_SPEAKERS = 4


def band_waves(rng: np.random.Generator, labels: list[int], cue_band: tuple[float, float],
               other_band: tuple[float, float], seconds: float = 0.3) -> torch.Tensor:
    """Speaker k: a tone at its own frequency in ``cue_band``; every utterance also has band noise of the same power
    in ``other_band`` and weak white noise. Only ``cue_band`` tells speakers apart. (B, samples)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    out = []
    for k in labels:
        f_cue = (cue_band[0] + (k + 0.5) * (cue_band[1] - cue_band[0]) / CUE_SPEAKERS) * (1 + 0.01 * rng.normal())
        x = 0.05 * 10 ** rng.uniform(-0.5, 0.5) * rng.standard_normal(n)
        x += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f_cue * t + rng.uniform(0, 2 * np.pi))
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum[(freqs < other_band[0]) | (freqs > other_band[1])] = 0
        band = np.fft.irfft(spectrum, n)
        x += rng.uniform(0.3, 1.0) * band / band.std() / np.sqrt(2)
        out.append(x)
    return torch.tensor(np.stack(out), dtype=torch.float32)


def band_profile(net: TinyNet, rng: np.random.Generator, cue_band, other_band) -> np.ndarray:
    """Mean SAM per mel bin over two target trials per speaker (both sides)."""
    axes = sam.layer_time_axes(net, ["block2"])
    total = 0.0
    for k in list(range(CUE_SPEAKERS)) * 2:
        enroll, test = band_waves(rng, [k, k], cue_band, other_band)
        result = sam.speaker_activation_maps(net, enroll, test, ["block2"], time_axes=axes)
        total = total + sam.frequency_profile(result.enroll_maps[0]) + sam.frequency_profile(result.test_maps[0])
    return total


@pytest.mark.parametrize("cue_band, other_band", [((2000, 3000), (400, 700)), ((400, 700), (2000, 3000))])
def test_map_moves_to_the_band_that_carries_the_speaker_after_training(cue_band, other_band):
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    net = TinyNet(n_mels=32, channels=8, n_out=16)
    centres = sam.model_mel_frequencies(net)
    in_cue = (centres >= cue_band[0]) & (centres <= cue_band[1])
    in_other = (centres >= other_band[0]) & (centres <= other_band[1])

    before = band_profile(net, np.random.default_rng(7), cue_band, other_band)
    assert in_other[np.argmax(before)], "untrained, the map follows the louder, wider noise band"

    head = nn.Linear(16, CUE_SPEAKERS)
    # weight decay lets the weights on what carries no cue fade
    optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=0.01, weight_decay=0.5)
    labels = np.arange(192) % CUE_SPEAKERS
    feats = net.features(band_waves(rng, list(labels), cue_band, other_band))
    target = torch.from_numpy(labels)
    for _ in range(60):
        batch = torch.randint(0, len(labels), (64,))
        loss = F.cross_entropy(head(net.trunk(feats[batch])), target[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05

    after = band_profile(net, np.random.default_rng(7), cue_band, other_band)
    assert in_cue[np.argmax(after)], f"profile peaks at {centres[np.argmax(after)]:.0f} Hz, outside {cue_band}"
    assert after[in_cue].mean() > 1.1 * after[in_other].mean()


# --- errors --------------------------------------------------------------------------------------------------------

def test_layers_that_cannot_give_a_map_are_explained():
    net = TinyNet(n_mels=16, channels=2, n_out=4).eval()
    enroll, test = noise(0.2, 1), noise(0.2, 2)
    assert sam.map_layers(net) == ["block1", "block2"]
    with pytest.raises(sam.SamError, match=r"Unknown layer 'layer9'.*layers that give a map: block1, block2; "):
        sam.speaker_activation_maps(net, enroll, test, ["layer9"])
    with pytest.raises(sam.SamError, match=r"'fc'.*one time axis.*layers that give a map: block1, block2\."):
        sam.layer_time_axes(net, ["fc"])
    with pytest.raises(sam.SamError, match=r"'torchfb'.*without gradient"):
        sam.layer_time_axes(net, ["torchfb"])
    with pytest.raises(sam.SamError, match=r"'torchfb'"):  # without the check of layer_time_axes
        sam.layer_gradients(net, enroll, test, ["torchfb"])
    net.block2.append(net.block2[1])  # the same ReLU module twice
    with pytest.raises(sam.SamError, match=r"'block2.1' \(--layer\) runs 2 times"):
        sam.layer_time_axes(net, ["block2.1"])


# --- the command line ----------------------------------------------------------------------------------------------

def calibrate_batchnorm(model: nn.Module) -> None:
    """Running statistics from one batch of noise, so that a randomly initialised network behaves in eval mode."""
    momenta = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            momenta[m] = m.momentum
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(4, 8000, generator=torch.Generator().manual_seed(0)))
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


MODEL_FLAGS = ["--n_mels", "40", "--nOut", "16", "--encoder_type", "SAP", "--nClasses", "4", "--device", "cpu"]


def write_checkpoint(path, model: str) -> nn.Module:
    cfg = parse_args(["--model", model, *MODEL_FLAGS])
    torch.manual_seed(0)
    net = runtime.build_net(cfg)
    calibrate_batchnorm(net.model)
    ckpt.atomic_save({"format": ckpt.FORMAT, "version": 1, "epoch": 0, "model": net.model.state_dict(),
                      "loss": net.loss.state_dict(), "config": cfg.to_dict()}, path)
    return net.model


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wav")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / SAMPLE_RATE
    paths = []
    for i, seconds in enumerate((0.6, 0.85, 0.7)):
        n = int(seconds * SAMPLE_RATE)
        x = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t[:n]) * (np.sin(2 * np.pi * 3 * t[:n]) > 0)
        path = root / f"utt{i}.wav"
        soundfile.write(path, (x + 0.02 * rng.standard_normal(n)).astype(np.float32), SAMPLE_RATE)
        paths.append(path)
    return paths


@pytest.mark.parametrize("model", ["DTDY_ResNet34_quarter", "ResNet34_quarter"])
def test_command_line_writes_figure_maps_and_the_score(model, wavs, tmp_path, capsys):
    weights = tmp_path / "random.model"
    net = write_checkpoint(weights, model)
    png, npy = tmp_path / "sam.png", tmp_path / "maps.npy"
    code = cli_main(["--model", model, *MODEL_FLAGS, "--initial_model", str(weights), "--enroll", str(wavs[0]),
                     "--test", str(wavs[1]), "--layer", "layer2,layer3.1.conv2", "--out", str(png),
                     "--npy", str(npy)])
    assert code == 0
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 300
    test_maps, enroll_maps = np.load(npy), np.load(tmp_path / "maps_enroll.npy")
    assert test_maps.shape == (2, 40, 1 + int(0.85 * SAMPLE_RATE) // 160)
    assert enroll_maps.shape == (2, 40, 1 + int(0.6 * SAMPLE_RATE) // 160)
    assert test_maps.min() >= 0 and test_maps.max() <= 1 and np.allclose(test_maps.max(axis=(1, 2)), 1.0)
    with torch.no_grad():
        emb = [net(torch.from_numpy(soundfile.read(w, dtype="float32")[0])[None]) for w in wavs[:2]]
    score = float(capsys.readouterr().out.split("score ")[1].split()[0])
    assert score == pytest.approx(float(F.cosine_similarity(*emb)), abs=1e-5)


def test_command_line_profile_averages_the_target_trials(wavs, tmp_path):
    weights = tmp_path / "random.model"
    net = write_checkpoint(weights, "ResNet34_quarter")
    trials = tmp_path / "trials.txt"
    names = [w.name for w in wavs]
    trials.write_text(f"1 {names[0]} {names[1]}\n0 {names[0]} {names[2]}\n1 {names[1]} {names[2]}\n"
                      f"1 {names[2]} {names[0]}\n")
    png, npy = tmp_path / "profile.png", tmp_path / "profile.npy"
    code = cli_main(["--model", "ResNet34_quarter", *MODEL_FLAGS, "--initial_model", str(weights),
                     "--trials", str(trials), "--test_path", str(wavs[0].parent), "--max_trials", "2",
                     "--layer", "layer1,layer4", "--out", str(png), "--npy", str(npy)])
    assert code == 0
    assert matplotlib.image.imread(png).ndim == 3
    profiles = np.load(npy)
    assert profiles.shape == (2, 40)
    expected = 0.0
    for e, t in ((0, 1), (2, 0)):  # 3 target trials, 2 evenly spaced: the first and the last
        r = sam.speaker_activation_maps(net, torch.from_numpy(soundfile.read(wavs[e], dtype="float32")[0]),
                                        torch.from_numpy(soundfile.read(wavs[t], dtype="float32")[0]),
                                        ["layer1", "layer4"])
        expected = expected + sam.frequency_profile(r.enroll_maps) + sam.frequency_profile(r.test_maps)
    np.testing.assert_allclose(profiles, expected / 4, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--layer", "layer9"], "layers that give a map: conv1, bn1, relu, layer1, layer2, layer3, layer4;"),
    (["--layer", "layer4,fc"], "Layer 'fc' (--layer) gives outputs (1, 16) and (1, 16)"),
    (["--layer", "torchfb"], "runs without gradient (the mel front-end)"),
    (["--n_mel", "40"], "did you mean '--n_mels'?"),
    (["--test", None], "Give either --enroll WAV and --test WAV"),
])
def test_command_line_errors_name_the_problem(extra, message, wavs, tmp_path, caplog):
    weights = tmp_path / "random.model"
    write_checkpoint(weights, "ResNet34_quarter")
    argv = ["--model", "ResNet34_quarter", *MODEL_FLAGS, "--initial_model", str(weights), "--enroll",
            str(wavs[0]), "--test", str(wavs[1]), "--out", str(tmp_path / "x.png")]
    if extra[1] is None:
        del argv[argv.index(extra[0]):argv.index(extra[0]) + 2]
    else:
        argv += extra
    assert cli_main(argv) == 2
    assert message in caplog.text
    assert not (tmp_path / "x.png").exists()
