"""The paper's mel front-end (DTDY-CNN, arXiv 2203.15277; voxceleb_trainer's ``torchfb``).

16 kHz waveform -> mel power spectrogram (n_fft 512, Hamming window of 25 ms, hop 10 ms, 0-8 kHz) -> ``+1e-6``,
natural log (when ``log_input``) -> per-utterance mean/variance normalisation of each mel bin over time
(InstanceNorm1d without affine). No pre-emphasis. Without gradient, with autocast off, and in float64 up to the fp32
features the network sees: an FFT in fp32 and the DFT of an ONNX export (export.py) differ by their rounding, ~1e-5
on the normalised log-mels, which reaches a trained network's embeddings; in float64 both give the same fp32
features, and an export differs from the eager model by the rounding of its layers alone. ``FrontEndEncoder`` is
the base of the encoders that hold this front-end and its augmentation hook (ECAPA-TDNN, CAM++).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torchaudio
from torch import nn

from dtdysv.data.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH

log = logging.getLogger(__name__)

LOG_OFFSET = 1e-6
INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm1d's default


class MelSpectrogram64(torchaudio.transforms.MelSpectrogram):
    """torchaudio's power MelSpectrogram computed in float64: wave (B, samples) -> mel power (B, n_mels, 1 + samples //
    hop) float64. Its buffers and settings are torchaudio's, so checkpoints and official weights load as before."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram
        stft = torch.stft(wave.double(), spec.n_fft, spec.hop_length, spec.win_length, spec.window.double(),
                          center=spec.center, pad_mode=spec.pad_mode, normalized=False, onesided=True,
                          return_complex=True)  # (B, n_fft // 2 + 1, frames)
        power = stft.real.square() + stft.imag.square()
        return torch.matmul(power.transpose(-1, -2), self.mel_scale.fb.double()).transpose(-1, -2)


def make_mel_spectrogram(n_mels: int) -> MelSpectrogram64:
    """The ``torchfb`` module of the official code, computed in float64; buffers ``spectrogram.window`` (400) and
    ``mel_scale.fb`` (257, n_mels)."""
    if n_mels < 1:
        raise ValueError(f"n_mels must be a positive number of mel bins, got {n_mels}.")
    return MelSpectrogram64(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
        f_min=0.0, f_max=SAMPLE_RATE / 2, window_fn=torch.hamming_window, n_mels=n_mels, power=2.0)


def log_mel(torchfb: nn.Module, wave: torch.Tensor, log_input: bool) -> torch.Tensor:
    """wave (B, samples) -> normalised (log-)mel features (B, n_mels, frames), fp32, no gradient. ``torchfb`` gives
    the float64 mel power (``MelSpectrogram64``, or export.py's DFT convolution), normalised in float64.

    frames = 1 + samples // 160 (centred STFT): 32,240 samples -> 202 frames.
    """
    if wave.dim() != 2:
        raise ValueError(f"The model expects a waveform batch of shape (B, samples), got {tuple(wave.shape)}.")
    with torch.no_grad(), torch.autocast(device_type=wave.device.type, enabled=False):
        x = torchfb(wave.float()).double() + LOG_OFFSET  # (B, n_mels, frames)
        if log_input:
            x = x.log()
        # InstanceNorm1d without affine, written out: ONNX Runtime normalises no float64 tensor with its operator
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).square().mean(dim=-1, keepdim=True)
        # fp32 features, or fp64 for a model made float64 as a whole (.double(): every buffer of torchfb float64)
        wide = all(buffer.dtype == torch.float64 for buffer in torchfb.buffers())
        return ((x - mean) / torch.sqrt(var + INSTANCE_NORM_EPS)).to(torch.float64 if wide else torch.float32)


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
