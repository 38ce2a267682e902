"""Speaker Activation Map (SAM) maths: layer capture, Grad-CAM of the cosine score, the log-mel grid.

From the DTDY paper (S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network
for Text-Independent Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277), a Grad-CAM variant
(R. R. Selvaraju et al., ICCV 2017): for score ``s = cos(e_enroll, e_test)`` and a layer's activation ``A`` (C x F' x
T'), ``alpha_c = mean_{f,t} ds/dA_c``, map ``ReLU(sum_c alpha_c A_c)`` resampled to the log-mel grid (n_mels x frames)
and scaled to [0, 1]. Needs a model whose ``forward`` takes a waveform and holds ``torchfb``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dtdysv.data.audio import crop_samples
from dtdysv.errors import UserError
from models._frontend import log_mel

PROBE_FRAMES = (96, 160)  # two input lengths that tell a layer's time axis from its frequency axis


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
    """Per layer, its time axis among the spatial dims (two input lengths tell), or why it gives no map."""
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
    """Per layer, the index of its time axis among the spatial dims; a layer giving no map is an error."""
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
    """Cosine score and per layer ``[(A, ds/dA) enroll, (A, ds/dA) test]``, detached (C, *spatial)."""
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
    """activation, gradient (C, *spatial) -> (alpha (C,), ReLU(sum_c alpha_c A_c) (*spatial))."""
    spatial = tuple(range(1, activation.dim()))
    alpha = gradient.mean(dim=spatial)
    cam = torch.relu(torch.tensordot(alpha, activation, dims=([0], [0])))
    return alpha, cam


def _resample(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linearly interpolate axis ``dim`` of a strided map onto ``size`` input points (cell j centred on j * S)."""
    n = x.shape[dim]
    pos = torch.arange(size, dtype=torch.float64) * (n / size)
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1] * x.dim()
    shape[dim] = size
    w = (pos - lo).clamp(0.0, 1.0).to(x.dtype).to(x.device).view(shape)
    return x.index_select(dim, lo.to(x.device)) * (1 - w) + x.index_select(dim, hi.to(x.device)) * w


def to_logmel_grid(cam: torch.Tensor, time_axis: int, n_mels: int, frames: int) -> torch.Tensor:
    """A layer's map (T') or (T', F') / (F', T') -> (n_mels, frames), divided by its maximum."""
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
    """The score and both utterances' SAMs at every layer; enroll, test (samples,) 16 kHz."""
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
