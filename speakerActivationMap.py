#!/usr/bin/env python
"""Speaker Activation Map (SAM): which time-frequency regions a verification score rests on.

The DTDY paper (S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network
for Text-Independent Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277) explains its
network with a Grad-CAM variant for verification (Grad-CAM: R. R. Selvaraju et al., ICCV 2017); no code was
published. For a trial with score ``s = cos(e_enroll, e_test)`` and a layer's activation ``A`` (C x F' x T') of one
utterance: channel weights ``alpha_c = mean_{f,t} ds/dA_c``, map ``ReLU(sum_c alpha_c A_c)``, resampled to the
log-mel grid (n_mels x frames) and divided by its maximum, so that it lies in [0, 1]. Both utterances get a map.

    python speakerActivationMap.py --config exps/demo/config.yaml --enroll a.wav --test b.wav --layer layer4
    python speakerActivationMap.py --config exps/demo/config.yaml --enroll a.wav --test b.wav \\
        --layer layer1,layer2,layer3,layer4 --out sam.png --npy sam.npy
    python speakerActivationMap.py --config exps/demo/config.yaml --trials demo_data/test_list.txt \\
        --test_path demo_data/test/wav --max_trials 100 --out profile.png       # mean SAM per mel bin

Every option of ``trainSpeakerNet.py`` is accepted (``--config``, ``--initial_model``, ``--model``, ``--n_mels``,
``--device``, ...); the weights are ``--initial_model``, else the newest checkpoint under ``--save_path``.
Works for every model whose ``forward`` takes a waveform and that holds its mel front-end as ``torchfb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from config import Config, UserError, parse_args
from DatasetLoader import load_eval, read_trial_list
from models._frontend import HOP_LENGTH, SAMPLE_RATE, crop_samples, log_mel

log = logging.getLogger("speakerActivationMap")

PROBE_FRAMES = (96, 160)  # two input lengths that tell a layer's time axis from its frequency axis
FRAME_S = HOP_LENGTH / SAMPLE_RATE  # the STFT is centred: frame t is centred at t * FRAME_S seconds
HZ_TICKS = (125, 250, 500, 1000, 2000, 4000, 6000, 8000)
SAM_CMAP = "jet"
SAM_OPACITY = 0.7  # overlay opacity where the map is 1; it fades to transparent where the map is 0


class SamError(UserError):
    pass


# --- layers and gradients -----------------------------------------------------------------------------------------

def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a dotted path such as ``layer3.5.conv2``); unknown names list the choices."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    deeper = [n for n in modules if n.count(".") == 2]
    deeper = [n for n in deeper if "conv" in n.rsplit(".", 1)[-1]] or deeper
    example = f", e.g. '{deeper[-1]}'" if deeper else ""
    raise SamError(f"Unknown layer '{name}' (--layer) in {type(model).__module__}; top-level layers that give a map: "
                   f"{', '.join(map_layers(model))}; deeper ones by dotted path{example}.")


@contextmanager
def _capture(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record every output of the named layers (kept out of any later in-place op: the network gets a clone)."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise SamError(f"Layer '{name}' returns {type(output).__name__}, not a tensor; choose another.")
            if torch.is_grad_enabled() and not output.requires_grad:  # nothing upstream is trainable
                output = output.detach().requires_grad_(True)
            outputs[name].append(output)
            return output.clone()
        return hook

    handles = [find_layer(model, name).register_forward_hook(hook_for(name)) for name in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _probe(model: nn.Module, layers: Sequence[str]) -> dict[str, str | int]:
    """Per layer, the index of its time axis among the spatial dims (after batch and channel), or why it gives no map.

    Two noise inputs of different lengths: the axis whose size changes is time. A layer also needs a tensor output
    (B, C, T) or (B, C, T, F) / (B, C, F, T), computed with gradients on (not in the mel front-end), once per forward.
    """
    model.eval()
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(1, crop_samples(frames), generator=gen) * 0.1 for frames in PROBE_FRAMES]
    seen: dict[str, list[tuple[tuple[int, ...] | None, bool]]] = {name: [] for name in layers}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            seen[name].append((shape, torch.is_grad_enabled()))
        return hook

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        with torch.enable_grad():
            for wave in waves:
                model(wave.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    found: dict[str, str | int] = {}
    for name, records in seen.items():
        shapes = [shape for shape, _ in records]
        if len(records) != len(waves):
            found[name] = f"runs {len(records) // len(waves)} times per forward (SAM needs a layer that runs once)"
        elif None in shapes:
            found[name] = "does not return a tensor"
        elif not all(grad for _, grad in records):
            found[name] = "runs without gradient (the mel front-end); choose a layer after it"
        else:
            small, large = shapes
            changed = [i for i in range(2, len(small)) if small[i] != large[i]] if len(small) == len(large) else []
            if len(small) not in (3, 4) or len(changed) != 1:
                found[name] = (f"gives outputs {small} and {large} for {PROBE_FRAMES[0]} and {PROBE_FRAMES[1]} "
                               f"frames, not a feature map with one time axis (a layer before the pooling)")
            else:
                found[name] = changed[0] - 2
    return found


def map_layers(model: nn.Module) -> list[str]:
    """The model's top-level layers that give a map."""
    names = [name for name, _ in model.named_children()]
    return [name for name, axis in _probe(model, names).items() if isinstance(axis, int)]


def layer_time_axes(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    """For each layer, the index (among the spatial dims after batch and channel) of its time axis.

    A layer that gives no map (after the pooling, in the front-end, run twice per forward) is an error.
    """
    for name in layers:
        find_layer(model, name)
    axes = {}
    for name, axis in _probe(model, layers).items():
        if isinstance(axis, str):
            raise SamError(f"Layer '{name}' (--layer) {axis}. Top-level layers that give a map: "
                           f"{', '.join(map_layers(model))}.")
        axes[name] = axis
    return axes


def layer_gradients(model: nn.Module, enroll: torch.Tensor, test: torch.Tensor,
                    layers: Sequence[str]) -> tuple[float, dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Cosine score of a trial and, per layer, ``[(A, ds/dA) of the enrollment, (A, ds/dA) of the test]``.

    enroll (samples,), test (samples,) 16 kHz waveforms. A and ds/dA are (C, *spatial) detached tensors in the
    layer's own layout. The model is put in eval mode.
    """
    model.eval()
    device = _device(model)
    with torch.enable_grad(), _capture(model, layers) as outputs:
        emb_enroll = model(enroll.reshape(1, -1).to(device))  # (1, nOut)
        emb_test = model(test.reshape(1, -1).to(device))
        score = F.cosine_similarity(emb_enroll.double(), emb_test.double(), dim=1)[0]
        for name in layers:
            if len(outputs[name]) != 2:
                raise SamError(f"Layer '{name}' runs {len(outputs[name]) // 2} times per forward; SAM needs a layer "
                               f"that runs once.")
        flat = [out for name in layers for out in outputs[name]]
        flat_ok = [out for out in flat if out.requires_grad]
        grads_ok = iter(torch.autograd.grad(score, flat_ok, allow_unused=True) if flat_ok else [])
        grads = [next(grads_ok) if out.requires_grad else None for out in flat]
    result = {}
    for i, name in enumerate(layers):
        pair = []
        for out, grad in zip(outputs[name], grads[2 * i:2 * i + 2], strict=True):
            if grad is None:
                raise SamError(f"The score does not depend on the output of layer '{name}' through a gradient; "
                               f"top-level layers that give a map: {', '.join(map_layers(model))}.")
            pair.append((out.detach()[0], grad[0]))
        result[name] = pair
    return float(score.detach()), result


def grad_cam(activation: torch.Tensor, gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """activation, gradient (C, *spatial) -> channel weights alpha (C,) = spatial mean of the gradient,
    map ReLU(sum_c alpha_c A_c) (*spatial), not normalised."""
    spatial = tuple(range(1, activation.dim()))
    alpha = gradient.mean(dim=spatial)
    cam = torch.relu(torch.tensordot(alpha, activation, dims=([0], [0])))
    return alpha, cam


def _resample(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear interpolation of axis ``dim`` of a strided feature map onto an input grid of ``size`` points.

    With odd kernels, padding (k - 1) / 2 and stride S, activation cell j is centred on input point j * S, so input
    point i reads the activation at position i * n / size (n cells), clamped to the last cell.
    """
    n = x.shape[dim]
    pos = torch.arange(size, dtype=torch.float64) * (n / size)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = size
    w = (pos - lo).clamp(0.0, 1.0).to(x.dtype).to(x.device).view(shape)
    return x.index_select(dim, lo.to(x.device)) * (1 - w) + x.index_select(dim, hi.to(x.device)) * w


def to_logmel_grid(cam: torch.Tensor, time_axis: int, n_mels: int, frames: int) -> torch.Tensor:
    """A layer's map (T') or (T', F') / (F', T') -> (n_mels, frames) on the log-mel grid, divided by its maximum.

    A map without a frequency axis is the same in every mel bin. An all-zero map stays zero.
    """
    if cam.dim() == 1:
        grid = _resample(cam, 0, frames).unsqueeze(0).expand(n_mels, frames)
    elif cam.dim() == 2:
        grid = _resample(_resample(cam.movedim(time_axis, 1), 1, frames), 0, n_mels)  # (F', T') -> (n_mels, frames)
    else:
        raise SamError(f"A layer map must have 1 or 2 spatial dims, got shape {tuple(cam.shape)}.")
    peak = grid.max()
    return grid / peak if peak > 0 else torch.zeros_like(grid)


# --- front-end geometry -------------------------------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray, mel_scale: str) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel: np.ndarray, mel_scale: str) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), mel * (200.0 / 3))


def mel_centre_frequencies(n_mels: int, sample_rate: int, f_min: float, f_max: float,
                           mel_scale: str = "htk") -> np.ndarray:
    """Centre frequency in Hz of each filter of ``torchaudio.functional.melscale_fbanks``, (n_mels,)."""
    if mel_scale not in ("htk", "slaney"):
        raise SamError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}.")
    f_max = sample_rate / 2 if f_max is None else f_max
    points = np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale), n_mels + 2)
    return _mel_to_hz(points[1:-1], mel_scale)


def _torchfb(model: nn.Module) -> nn.Module:
    fb = getattr(model, "torchfb", None)
    if getattr(fb, "mel_scale", None) is None:
        raise SamError(f"{type(model).__module__} has no mel front-end 'torchfb' (a torchaudio MelSpectrogram); SAM "
                       f"draws its maps on the model's log-mel grid.")
    return fb


def model_mel_frequencies(model: nn.Module) -> np.ndarray:
    """Mel bin centre frequencies (Hz) of the model's front-end ``model.torchfb`` (a torchaudio MelSpectrogram)."""
    mel = _torchfb(model).mel_scale
    return mel_centre_frequencies(mel.n_mels, mel.sample_rate, mel.f_min, mel.f_max, mel.mel_scale)


# --- one trial ------------------------------------------------------------------------------------------------------

@dataclass
class TrialSam:
    score: float  # cosine of the two embeddings
    layers: list[str]
    enroll_logmel: np.ndarray  # (n_mels, frames_enroll), the model's normalised log-mel input
    test_logmel: np.ndarray  # (n_mels, frames_test)
    enroll_maps: np.ndarray  # (n_layers, n_mels, frames_enroll) in [0, 1]
    test_maps: np.ndarray  # (n_layers, n_mels, frames_test) in [0, 1]


def speaker_activation_maps(model: nn.Module, enroll: torch.Tensor, test: torch.Tensor, layers: Sequence[str],
                            log_input: bool = True, time_axes: dict[str, int] | None = None) -> TrialSam:
    """The score and the SAM of both utterances at every layer. enroll, test (samples,) 16 kHz waveforms.

    ``time_axes`` (from :func:`layer_time_axes`) is computed when not given. A map is zero everywhere when no
    channel's activation raises the score (e.g. a near-identical pair, where the cosine is at its maximum).
    """
    layers = list(layers)
    time_axes = time_axes if time_axes is not None else layer_time_axes(model, layers)
    score, grads = layer_gradients(model, enroll, test, layers)
    fb = _torchfb(model)
    feats, maps = [], []
    for side, wave in enumerate((enroll, test)):
        logmel = log_mel(fb, wave.reshape(1, -1).to(_device(model)), log_input)[0]  # (n_mels, frames)
        n_mels, frames = logmel.shape
        feats.append(logmel.cpu().numpy())
        side_maps = []
        for name in layers:
            activation, gradient = grads[name][side]
            _, cam = grad_cam(activation.double(), gradient.double())
            side_maps.append(to_logmel_grid(cam, time_axes[name], n_mels, frames).float().cpu().numpy())
        maps.append(np.stack(side_maps))
    return TrialSam(score, layers, feats[0], feats[1], maps[0], maps[1])


def frequency_profile(maps: np.ndarray) -> np.ndarray:
    """Mean of SAMs over time: (..., n_mels, frames) -> (..., n_mels)."""
    return maps.mean(axis=-1)


# --- figures ---------------------------------------------------------------------------------------------------------

def _hz_axis(ax, centres: np.ndarray, axis: str) -> None:
    """Label a mel-bin-index axis with frequencies in Hz."""
    ticks = [hz for hz in HZ_TICKS if centres[0] <= hz <= centres[-1]]
    positions = np.interp(ticks, centres, np.arange(len(centres)))
    labels = [f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in ticks]
    if axis == "y":
        ax.set_yticks(positions, labels)
        ax.set_ylabel("frequency (Hz)")
    else:
        ax.set_xticks(positions, labels)
        ax.set_xlabel("frequency (Hz)")


def plot_trial(result: TrialSam, centres: np.ndarray, out: str | Path, title: str,
               names: tuple[str, str] = ("enrollment", "test"), dpi: int = 110) -> None:
    """Log-mel spectrograms with the SAM overlaid: rows enrollment and test, one column per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = len(result.layers)
    fig, axes = plt.subplots(2, n_layers, figsize=(1.5 + 4.6 * n_layers, 6.4), squeeze=False,
                             constrained_layout=True)
    cmap = plt.get_cmap(SAM_CMAP)
    for row, (logmel, maps, name) in enumerate(((result.enroll_logmel, result.enroll_maps, names[0]),
                                                (result.test_logmel, result.test_maps, names[1]))):
        n_mels, frames = logmel.shape
        extent = (-0.5 * FRAME_S, (frames - 0.5) * FRAME_S, -0.5, n_mels - 0.5)  # frame t: (t -/+ 0.5) * FRAME_S
        for col, layer in enumerate(result.layers):
            ax = axes[row, col]
            ax.imshow(logmel, origin="lower", aspect="auto", cmap="gray", extent=extent, interpolation="nearest")
            overlay = cmap(maps[col])  # (n_mels, frames, 4) RGBA, opacity growing with the map
            overlay[..., 3] = SAM_OPACITY * maps[col]
            ax.imshow(overlay, origin="lower", aspect="auto", extent=extent, interpolation="bilinear")
            if not maps[col].any():
                ax.text(0.5, 0.5, "SAM zero everywhere", transform=ax.transAxes, ha="center", va="center",
                        bbox={"facecolor": "white", "alpha": 0.8})
            _hz_axis(ax, centres, "y")
            ax.set_xlabel("time (s)")
            ax.set_title(f"{name}, SAM at {layer}", fontsize=10)
            if col > 0:
                ax.set_ylabel("")
    fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), cmap), ax=axes, shrink=0.8,
                 label="SAM (opacity grows with it)")
    fig.suptitle(f"{title}   cosine score {result.score:.3f}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def plot_profile(profiles: np.ndarray, layers: Sequence[str], centres: np.ndarray, out: str | Path,
                 title: str, dpi: int = 110) -> None:
    """Mean SAM per mel bin, one line per layer; profiles (n_layers, n_mels), x axis in Hz (mel-spaced)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    for profile, layer in zip(profiles, layers, strict=True):
        ax.plot(np.arange(len(centres)), profile, marker=".", label=layer)
    _hz_axis(ax, centres, "x")
    ax.set_ylabel("mean SAM over time")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="layer")
    ax.set_title(title)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerActivationMap.py", allow_abbrev=False,
        description="Speaker Activation Map (Grad-CAM of the cosine score) of a trial, or the mean frequency "
                    "profile over the target trials of a list.",
        epilog="Every option of trainSpeakerNet.py is accepted too (--config, --initial_model, --save_path, --model, "
               "--encoder_type, --n_mels, --nOut, --test_path, --device, ...): see `python trainSpeakerNet.py "
               "--help`. The weights are --initial_model, else the newest checkpoint under --save_path.")
    add = parser.add_argument
    add("--enroll", type=str, metavar="WAV", help="enrollment wav (16 kHz mono)")
    add("--test", type=str, metavar="WAV", help="test wav (16 kHz mono)")
    add("--trials", type=str, metavar="LIST", help="trial list '<label> <enroll> <test>' under --test_path: average "
                                                   "the SAM over its target trials into a frequency profile")
    add("--max_trials", type=int, metavar="N", default=100,
        help="--trials: at most this many target trials, evenly spaced through the list (default: 100)")
    add("--layer", type=str, metavar="NAMES", default="layer4",
        help="layer(s), comma-separated: submodule names such as layer4 or layer3.5.conv2 (default: layer4)")
    add("--out", type=str, metavar="PNG", help="figure to write (default: sam.png, with --trials sam_profile.png)")
    add("--dpi", type=int, default=110, help="figure resolution in dots per inch (default: 110)")
    add("--npy", type=str, metavar="NPY",
        help="also save the maps as a NumPy array: (n_layers, n_mels, frames) of the test utterance (the "
             "enrollment's beside it as *_enroll.npy); with --trials the profiles (n_layers, n_mels)")
    return parser


def _load_wave(path: str) -> torch.Tensor:
    if not Path(path).is_file():
        raise SamError(f"Audio file '{path}' does not exist.")
    return torch.from_numpy(load_eval(path, 0, 1)[0])


def _select_trials(path: str, test_path: str, max_trials: int) -> list[tuple[str, str]]:
    trials = read_trial_list(path, test_path)
    pairs = list(zip(trials.enroll, trials.test, strict=True))
    if trials.labels is not None:
        pairs = [p for p, label in zip(pairs, trials.labels, strict=True) if label == 1]
        if not pairs:
            raise SamError(f"Trial list '{path}' (--trials) has no target trials (label 1).")
    else:
        log.info("'%s' is unlabeled: averaging over all its trials", path)
    if len(pairs) > max_trials:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_trials).round().astype(int)]
    root = Path(test_path)
    return [(str(root / e), str(root / t)) for e, t in pairs]


def _load_model(cfg: Config) -> nn.Module:
    """The configured model with the weights of --initial_model (or the newest checkpoint), in eval mode."""
    from distributed import DistEnv
    from trainSpeakerNet import build_for_inference, pick_device

    if cfg.compile:
        log.info("--compile is ignored here: the maps need the layers' activations and their gradients")
    trainer, _ = build_for_inference(dataclasses.replace(cfg, compile=False), pick_device(cfg.device), DistEnv())
    model = trainer.speaker_net.model.eval()
    return model.requires_grad_(False)  # gradients are taken w.r.t. activations only


def _run_trial(args: argparse.Namespace, cfg: Config, model: nn.Module, layers: list[str],
               axes: dict[str, int]) -> list[str]:
    result = speaker_activation_maps(model, _load_wave(args.enroll), _load_wave(args.test), layers, cfg.log_input,
                                     axes)
    for name, enroll_map, test_map in zip(layers, result.enroll_maps, result.test_maps, strict=True):
        if not enroll_map.any() or not test_map.any():
            log.warning("layer %s: a SAM is zero everywhere (no channel's activation raises the score)", name)
    out = args.out or "sam.png"
    plot_trial(result, model_mel_frequencies(model), out, f"{cfg.model} ({cfg.encoder_type})",
               (f"enrollment {Path(args.enroll).name}", f"test {Path(args.test).name}"), args.dpi)
    written = [out]
    if args.npy:
        enroll_npy = str(Path(args.npy).with_name(Path(args.npy).stem + "_enroll.npy"))
        np.save(args.npy, result.test_maps)
        np.save(enroll_npy, result.enroll_maps)
        written += [args.npy, enroll_npy]
    print(f"score {result.score:.6f}")
    return written


def _run_profile(args: argparse.Namespace, cfg: Config, model: nn.Module, layers: list[str],
                 axes: dict[str, int]) -> list[str]:
    pairs = _select_trials(args.trials, cfg.test_path, args.max_trials)
    centres = model_mel_frequencies(model)
    total = np.zeros((len(layers), len(centres)))
    zero = np.zeros(len(layers), dtype=np.int64)  # all-zero maps per layer
    for enroll, test in tqdm(pairs, desc="trials", dynamic_ncols=True):
        result = speaker_activation_maps(model, _load_wave(enroll), _load_wave(test), layers, cfg.log_input, axes)
        for maps in (result.enroll_maps, result.test_maps):
            total += frequency_profile(maps)
            zero += ~maps.any(axis=(1, 2))
    profiles = total / (2 * len(pairs))
    for layer, profile, n_zero in zip(layers, profiles, zero, strict=True):
        log.info("layer %s: profile peaks at %.0f Hz; %d of %d maps zero everywhere", layer,
                 centres[int(np.argmax(profile))], n_zero, 2 * len(pairs))
    out = args.out or "sam_profile.png"
    plot_profile(profiles, layers, centres, out,
                 f"{cfg.model} ({cfg.encoder_type}): mean SAM of {2 * len(pairs)} utterances ({len(pairs)} trials)",
                 args.dpi)
    written = [out]
    if args.npy:
        np.save(args.npy, profiles.astype(np.float32))
        written.append(args.npy)
    return written


def main(argv: list[str] | None = None) -> int:
    from trainSpeakerNet import setup_logging

    setup_logging()
    args, rest = build_parser().parse_known_args(argv)
    try:
        cfg = parse_args(rest)
        single = args.enroll is not None or args.test is not None
        if single == (args.trials is not None) or (single and (args.enroll is None or args.test is None)):
            raise SamError("Give either --enroll WAV and --test WAV (one trial) or --trials LIST (a profile).")
        if args.max_trials < 1 or args.dpi < 10:
            raise SamError(f"--max_trials must be at least 1 and --dpi at least 10, got {args.max_trials} and "
                           f"{args.dpi}.")
        layers = [name.strip() for name in args.layer.split(",") if name.strip()]
        if not layers:
            raise SamError(f"--layer '{args.layer}' names no layer.")
        model = _load_model(cfg)
        axes = layer_time_axes(model, layers)
        written = (_run_trial if single else _run_profile)(args, cfg, model, layers, axes)
    except UserError as err:
        log.error("%s", err)
        return 2
    for file in written:
        print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
