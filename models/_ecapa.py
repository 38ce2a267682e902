"""ECAPA-TDNN, the 1-D convolutional baseline, one builder for both widths.

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation in
TDNN Based Speaker Verification", Interspeech 2020; layout as WeSpeaker's ``ECAPA_TDNN_GLOB_c512`` / ``_c1024``.

wave -> log-mel (B, n_mels, T) -> Conv1d(k 5) (B, C, T) -> three SE-Res2Blocks (dilations 2, 3, 4, scale 8) -> concat
(B, 3C, T) -> Conv1d(-> 1536) -> pooling (B, 3072) -> BN -> Linear -> (B, nOut); TDNN units are Conv -> ReLU -> BN.
Poolings: ASP (ContextASP with global context), STP, AVG; population variance, floor 1e-5.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from config import DEFAULTS
from models._frontend import FrontEndEncoder
from models._pooling import make_baseline_pooling

log = logging.getLogger(__name__)

RES2_SCALE = 8  # Res2Net branches of a block
SE_BOTTLENECK = 128
BLOCK_DILATIONS = (2, 3, 4)
MFA_CHANNELS = 1536  # output of the aggregation conv, 3 x 512 for both widths (as in WeSpeaker)


def _conv_relu_bn(in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> nn.Sequential:
    """Conv1d (with bias, 'same' padding) -> ReLU -> BN: (B, C_in, T) -> (B, C_out, T)."""
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                                   dilation=dilation),
                         nn.ReLU(inplace=True), nn.BatchNorm1d(out_channels))


class Res2Conv1d(nn.Module):
    """Res2Net convolution, (B, C, T) -> (B, C, T): ``scale`` channel groups, group i > 0 is K_i(x_i + y_{i-1}), the
    last passes unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Conv1d: channels ({channels}) must be a multiple of the scale ({scale}).")
        self.width = channels // scale
        self.branches = nn.ModuleList(_conv_relu_bn(self.width, self.width, kernel_size, dilation)
                                      for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, self.width, dim=1)
        out = []
        y = chunks[0]
        for i, branch in enumerate(self.branches):
            y = branch(y if i == 0 else y + chunks[i])
            out.append(y)
        out.append(chunks[-1])
        return torch.cat(out, dim=1)


class SqueezeExcitation1d(nn.Module):
    """x * sigmoid(Linear(ReLU(Linear(mean_t x)))): (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.linear2(torch.relu(self.linear1(x.mean(dim=2)))))  # (B, C)
        return x * gate.unsqueeze(2)


class SERes2Block(nn.Module):
    """x + SE(TDNN_1x1(Res2(TDNN_1x1(x)))): (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.tdnn1 = _conv_relu_bn(channels, channels, 1, 1)
        self.res2 = Res2Conv1d(channels, kernel_size, dilation, RES2_SCALE)
        self.tdnn2 = _conv_relu_bn(channels, channels, 1, 1)
        self.se = SqueezeExcitation1d(channels, SE_BOTTLENECK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.tdnn2(self.res2(self.tdnn1(x))))


class ECAPATDNN(FrontEndEncoder):
    """Front-end, ECAPA-TDNN trunk of width ``channels`` (a plugin class attribute), pooling, BN, embedding: wave (B,
    samples) -> (B, nOut)."""

    channels: int

    def __init__(self, nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80,
                 log_input: bool = DEFAULTS.log_input) -> None:
        super().__init__(nOut, n_mels, log_input)
        channels = self.channels
        self.layer1 = _conv_relu_bn(n_mels, channels, 5, 1)
        self.layer2, self.layer3, self.layer4 = (SERes2Block(channels, 3, d) for d in BLOCK_DILATIONS)
        self.mfa = nn.Sequential(nn.Conv1d(3 * channels, MFA_CHANNELS, 1), nn.ReLU(inplace=True))
        self.pooling = make_baseline_pooling(encoder_type, MFA_CHANNELS, True, "ECAPA-TDNN")
        self.bn = nn.BatchNorm1d(self.pooling.out_dim)
        self.fc = nn.Linear(self.pooling.out_dim, nOut)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.features(wave)  # (B, n_mels, T)
        out2 = self.layer2(self.layer1(feats))  # (B, C, T)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        x = self.mfa(torch.cat([out2, out3, out4], dim=1))  # (B, 1536, T)
        return self.fc(self.bn(self.pooling(x)))  # (B, nOut)
