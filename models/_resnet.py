"""The ResNet-34 speaker encoder of DTDY-CNN and its static twin, one builder for every variant.

S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network for Text-Independent
Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277 (2022). ResNet: K. He, X. Zhang, S. Ren,
J. Sun, CVPR 2016.

wave -> log-mel (B, n_mels, T) -> 7 x 7 stem (stride 2 in frequency) -> four stages of BasicBlocks (strides 1, 2, 2, 1)
-> (B, C3 * F', T') -> pooling -> Linear -> (B, nOut). The trunk runs on (B, C, T, F) in channels-last memory, kernels
(time, frequency).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from models._dtdy import DTDYConv2d
from models._frontend import log_mel, make_mel_spectrogram
from models._pooling import make_pooling

log = logging.getLogger(__name__)

RESNET34_DEPTHS = (3, 4, 6, 3)
WIDTHS_HALF = (32, 64, 128, 256)  # x0.50
WIDTHS_QUARTER = (16, 32, 64, 128)  # x0.25
STAGE_STRIDES = (1, 2, 2, 1)
STEM_KERNEL = 7
STEM_FREQ_STRIDE = 2


def _out_size(size: int, stride: int) -> int:
    """Output length of an odd-kernel conv with padding (k - 1) / 2."""
    return (size - 1) // stride + 1


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, freq_size: int,
          dynamic: bool) -> nn.Module:
    if dynamic:
        return DTDYConv2d(in_channels, out_channels, kernel_size, stride, freq_size)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU: (B, C_in, T, F) -> (B, C_out, T', F'); ``freq_size``
    is F."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, freq_size: int, dynamic: bool) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, freq_size, dynamic)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, _out_size(freq_size, stride), dynamic)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv(in_channels, out_channels, 1, stride, freq_size, dynamic),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # (B, C_out, T', F')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, T', F')
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNetSpeakerEncoder(nn.Module):
    """Front-end, ResNet trunk, pooling and embedding: wave (B, samples) -> (B, nOut).

    widths, depths: per stage; dynamic: DTDY (True) or plain (False) block and shortcut convolutions.
    """

    def __init__(self, *, widths: tuple[int, ...], depths: tuple[int, ...], dynamic: bool, nOut: int,
                 encoder_type: str, n_mels: int, log_input: bool) -> None:
        super().__init__()
        if len(widths) != len(STAGE_STRIDES) or len(depths) != len(STAGE_STRIDES):
            raise ValueError(f"A ResNet variant needs {len(STAGE_STRIDES)} widths and depths, got {widths}, {depths}.")
        if nOut < 1:
            raise ValueError(f"nOut (embedding size) must be positive, got {nOut}.")
        self.log_input = log_input
        self.torchfb = make_mel_spectrogram(n_mels)
        # Training-time log-mel augmentation hook (models/__init__.py); a callable, not a submodule.
        self.feature_augment: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.conv1 = nn.Conv2d(1, widths[0], STEM_KERNEL, stride=(1, STEM_FREQ_STRIDE), padding=STEM_KERNEL // 2,
                               bias=False)  # (time, frequency)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        freq = _out_size(n_mels, STEM_FREQ_STRIDE)
        channels = widths[0]
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential() for _ in range(4))
        for stage, (width, depth, stride) in enumerate(zip(widths, depths, STAGE_STRIDES, strict=True)):
            layer = getattr(self, f"layer{stage + 1}")
            for i in range(depth):
                layer.append(BasicBlock(channels, width, stride if i == 0 else 1, freq, dynamic))
                freq = _out_size(freq, stride if i == 0 else 1)
                channels = width
        self.pooling = make_pooling(encoder_type, channels * freq)
        self.fc = nn.Linear(self.pooling.out_dim, nOut)
        for m in self.modules():  # the official initialisation (DTDY convs initialise themselves)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = log_mel(self.torchfb, wave, self.log_input)  # (B, n_mels, T)
        if self.training and self.feature_augment is not None:
            feats = self.feature_augment(feats)
        x = feats.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last)  # (B, 1, T, F)
        x = self.relu(self.bn1(self.conv1(x))).contiguous(memory_format=torch.channels_last)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C3, T', F')
        x = x.permute(0, 1, 3, 2).flatten(1, 2)  # (B, C3 * F', T'), feature c * F' + f as in the official code
        return self.fc(self.pooling(x))
