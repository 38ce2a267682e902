"""The paper's mel front-end (DTDY-CNN, arXiv 2203.15277; voxceleb_trainer's ``torchfb``).

16 kHz wave -> mel power spectrogram (n_fft 512, 25 ms Hamming, hop 10 ms, 0-8 kHz) -> ``+1e-6``, log (``log_input``) ->
per-utterance mean/variance normalisation per mel bin. fp32, autocast off, no gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from dtdysv.data.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH

log = logging.getLogger(__name__)

LOG_OFFSET = 1e-6
INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm1d's default


class MelSpectrogram(torchaudio.transforms.MelSpectrogram):
    """torchaudio's MelSpectrogram with its forward written out: the same operations, so the same values, but
    torch.compile traces it in one graph (torchaudio's spectrogram calls ``torch.jit.isinstance``, a graph break)."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, samples) -> mel power (B, n_mels, frames)."""
        spec = self.spectrogram
        stft = torch.stft(wave, spec.n_fft, spec.hop_length, spec.win_length, spec.window, center=spec.center,
                          pad_mode=spec.pad_mode, normalized=False, onesided=spec.onesided, return_complex=True)
        power = stft.abs().pow(spec.power)  # (B, n_fft // 2 + 1, frames)
        return torch.matmul(power.transpose(-1, -2), self.mel_scale.fb).transpose(-1, -2)


def make_mel_spectrogram(n_mels: int) -> MelSpectrogram:
    """The official ``torchfb``; buffers ``spectrogram.window`` (400), ``mel_scale.fb`` (257, n_mels)."""
    if n_mels < 1:
        raise ValueError(f"n_mels must be a positive number of mel bins, got {n_mels}.")
    return MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
        f_min=0.0, f_max=SAMPLE_RATE / 2, window_fn=torch.hamming_window, n_mels=n_mels, power=2.0)


def log_mel(torchfb: torchaudio.transforms.MelSpectrogram, wave: torch.Tensor, log_input: bool) -> torch.Tensor:
    """wave (B, samples) -> normalised (log-)mel features (B, n_mels, 1 + samples // 160), fp32."""
    if wave.dim() != 2:
        raise ValueError(f"The model expects a waveform batch of shape (B, samples), got {tuple(wave.shape)}.")
    with torch.no_grad(), torch.autocast(device_type=wave.device.type, enabled=False):
        x = torchfb(wave.float()) + LOG_OFFSET
        if log_input:
            x = x.log()
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)


class FrontEndEncoder(nn.Module):
    """Base of an encoder holding ``torchfb``, ``log_input`` and ``feature_augment``; :meth:`features` gives the trunk
    its input."""

    def __init__(self, nOut: int, n_mels: int, log_input: bool) -> None:
        super().__init__()
        if nOut < 1:
            raise ValueError(f"nOut (embedding size) must be positive, got {nOut}.")
        self.log_input = log_input
        self.torchfb = make_mel_spectrogram(n_mels)
        # Training-time log-mel augmentation hook (models/__init__.py); a callable, not a submodule.
        self.feature_augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, samples) -> log-mel (B, n_mels, frames), augmented in training mode when a hook is set."""
        feats = log_mel(self.torchfb, wave, self.log_input)
        if self.training and self.feature_augment is not None:
            feats = self.feature_augment(feats)
        return feats
