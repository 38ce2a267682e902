"""Conversion of checkpoints written by the official DTDY-CNN code (arXiv 2203.15277, voxceleb_trainer based).

An official checkpoint holds ``model_state_dict`` (encoder keys ``__S__.``, loss head ``__L__.``) and
``optimizer_state_dict``. The encoder's modules are ``conv1, bn1, layer1..4, attention, fc``; each DTDY conv has
``conv`` (W0), ``q``, ``p``, ``bn1`` (BN_a), ``bn2`` (BN_b), ``fc_phi.{fc1, semodule.fc.0, fc2}``. Its kernels are
(frequency, time), so every 2D kernel is transposed.

Front-end buffers (``torchfb.0.*``, ``torchfb.*`` or none) are checked against the model's, not loaded; a mismatch names
the setting to change; a pre-emphasis front-end (``torchfb.0.flipped_filter``) is refused. A key no rule places, an
unknown name, a wrong shape or an unfilled model key is a ValueError naming it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

import torch

log = logging.getLogger(__name__)

ENCODER_PREFIX = "__S__."
LOSS_PREFIX = "__L__."
FRONTEND_PREFIX = "torchfb."
# tolerance of the front-end check: filterbanks computed by other torchaudio versions differ by rounding only
FRONTEND_RTOL, FRONTEND_ATOL = 1e-4, 1e-6

_DTDY = r"(?P<conv>layer\d+\.\d+\.(?:conv[12]|downsample\.0))\."


def _transpose_kernel(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2).contiguous()


def _squeeze_1x1(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1])  # (C_out, L, 1, 1) -> (C_out, L)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


# (official key pattern, our key template, tensor transform); the first match wins, patterns are anchored.
RULES: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]] = [
    (r"torchfb\.(?:0\.)?(?P<rest>spectrogram\.window|mel_scale\.fb)", "torchfb.{rest}", _same),
    (r"conv1\.weight", "conv1.weight", _transpose_kernel),
    (r"bn1\.(?P<rest>weight|bias|running_mean|running_var|num_batches_tracked)", "bn1.{rest}", _same),
    (_DTDY + r"conv\.weight", "{conv}.w0", _transpose_kernel),
    (_DTDY + r"q\.weight", "{conv}.q", _transpose_kernel),
    (_DTDY + r"p\.weight", "{conv}.p", _squeeze_1x1),
    (_DTDY + r"bn1\.(?P<rest>weight|bias|running_mean|running_var|num_batches_tracked)", "{conv}.bn_latent.{rest}",
     _same),
    (_DTDY + r"bn2\.(?P<rest>weight|bias|running_mean|running_var|num_batches_tracked)", "{conv}.bn_mix.{rest}",
     _same),
    (_DTDY + r"fc_phi\.fc1\.(?P<rest>weight|bias)", "{conv}.phi.conv_in.{rest}", _same),
    (_DTDY + r"fc_phi\.semodule\.fc\.0\.weight", "{conv}.phi.gate.weight", _same),
    (_DTDY + r"fc_phi\.fc2\.(?P<rest>weight|bias)", "{conv}.phi.conv_out.{rest}", _same),
    (r"(?P<block>layer\d+\.\d+)\.(?P<rest>(?:bn[12]|downsample\.1)\."
     r"(?:weight|bias|running_mean|running_var|num_batches_tracked))", "{block}.{rest}", _same),
    (r"attention\.(?P<rest>[013]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))",
     "pooling.attention.{rest}", _same),
    (r"fc\.(?P<rest>weight|bias)", "fc.{rest}", _same),
]
_COMPILED = [(re.compile(pattern), target, transform) for pattern, target, transform in RULES]


def is_official_checkpoint(obj: object) -> bool:
    """True for a dict in the official training format (``model_state_dict`` with ``__S__.`` keys)."""
    if not isinstance(obj, Mapping):
        return False
    state = obj.get("model_state_dict")
    return isinstance(state, Mapping) and any(str(k).startswith(ENCODER_PREFIX) for k in state)


def map_official_key(key: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Our name for one official encoder key (without ``__S__.``) and the transform its tensor needs."""
    for pattern, target, transform in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return target.format(**match.groupdict()), transform
    if key.startswith(FRONTEND_PREFIX) and key.endswith("flipped_filter"):
        raise ValueError(f"Official checkpoint key '{ENCODER_PREFIX}{key}' is the pre-emphasis filter of "
                         f"voxceleb_trainer's front-end; the DTDY models compute log-mels without pre-emphasis, so "
                         f"this checkpoint's features differ from theirs.")
    raise ValueError(f"Official checkpoint key '{ENCODER_PREFIX}{key}' has no place in this model "
                     f"(no conversion rule matches it).")


def check_frontend(name: str, theirs: torch.Tensor, ours: torch.Tensor, key: str) -> None:
    """Raise ValueError unless the checkpoint's buffer ``theirs`` (key ``key``) equals our ``ours`` (``name``)."""
    if name.endswith("mel_scale.fb"):
        what, setting = "mel filterbank", "n_mels"
        if theirs.dim() == 2 and ours.dim() == 2 and theirs.shape[1] != ours.shape[1]:
            raise ValueError(f"Official key '{key}' is a filterbank of {theirs.shape[1]} mel bins; this model has "
                             f"{ours.shape[1]}: set --n_mels {theirs.shape[1]} (n_mels in the YAML config).")
    else:
        what, setting = "analysis window", "the front-end (a Hamming window of 400 samples, 25 ms)"
    if theirs.shape != ours.shape:
        raise ValueError(f"Official key '{key}' ({what}) has shape {tuple(theirs.shape)}; this model's is "
                         f"{tuple(ours.shape)}: the checkpoint was trained with other features than {setting}.")
    if not torch.allclose(theirs.to(ours.dtype), ours, rtol=FRONTEND_RTOL, atol=FRONTEND_ATOL):
        worst = float((theirs.to(ours.dtype) - ours).abs().max())
        raise ValueError(f"Official key '{key}' ({what}) differs from this model's by up to {worst:.3g}: the "
                         f"checkpoint was trained with other features (sample rate, n_fft, f_min/f_max, mel scale "
                         f"or window) than this model's front-end (16 kHz, n_fft 512, 0-8 kHz, HTK mel scale, "
                         f"Hamming window of 400 samples).")


def convert_official_checkpoint(obj: Mapping[str, object], model_state: Mapping[str, torch.Tensor],
                                source: str = "the checkpoint") -> tuple[dict[str, torch.Tensor],
                                                                         dict[str, torch.Tensor]]:
    """Official checkpoint -> (model state_dict for strict loading, loss-head state_dict without ``__L__.``); front-end
    buffers checked against ``model_state``'s."""
    if not is_official_checkpoint(obj):
        raise ValueError(f"{source} is not an official DTDY-CNN checkpoint (expected a dict with "
                         f"'model_state_dict' whose keys start with '{ENCODER_PREFIX}').")
    official = obj["model_state_dict"]
    model: dict[str, torch.Tensor] = {}
    loss: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        if key.startswith(LOSS_PREFIX):
            loss[key[len(LOSS_PREFIX):]] = tensor
            continue
        if not key.startswith(ENCODER_PREFIX):
            raise ValueError(f"Key '{key}' in {source} has neither the '{ENCODER_PREFIX}' (encoder) nor the "
                             f"'{LOSS_PREFIX}' (loss head) prefix.")
        name, transform = map_official_key(key[len(ENCODER_PREFIX):])
        if name not in model_state:
            raise ValueError(f"Official key '{key}' maps to '{name}', which this model does not have "
                             f"(another architecture, depth or pooling?).")
        value = transform(tensor)
        if name.startswith(FRONTEND_PREFIX):
            check_frontend(name, value, model_state[name], key)
            continue  # the model keeps its own buffers (filled below)
        if tuple(value.shape) != tuple(model_state[name].shape):
            raise ValueError(f"Official key '{key}' has shape {tuple(tensor.shape)}; as '{name}' this model "
                             f"needs {tuple(model_state[name].shape)} (another width, n_mels, nOut or "
                             f"encoder_type?).")
        model[name] = value
    for name, tensor in model_state.items():
        if name not in model and name.startswith(FRONTEND_PREFIX):
            model[name] = tensor.detach().clone()
    missing = [name for name in model_state if name not in model]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"{source} lacks {len(missing)} tensors this model needs: {shown}.")
    log.info("converted %d official encoder tensors and %d loss-head tensors from %s", len(model), len(loss),
             source)
    return model, loss
