"""CAM++, the densely connected TDNN baseline with context-aware masking.

H. Wang, S. Zheng, Y. Chen, L. Cheng, Q. Chen, "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023; layout and parameter count as 3D-Speaker's and WeSpeaker's ``CAMPPlus``.

wave -> log-mel (B, F, T) -> front-end convolution module, a 2-D ResNet striding in frequency, (B, 32 ceil(F / 8), T) ->
TDNN (k 5, stride 2) (B, 128, T') -> three CAM-dense blocks (12, 24, 16 layers, growth 32) with transit layers -> (B,
512, T') -> pooling (STP, ASP or AVG) -> Linear -> BN -> embedding (B, nOut). Pooling statistics use the population
variance with floor 1e-5, as every pooling here.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from models._frontend import FrontEndEncoder
from models._pooling import make_baseline_pooling

log = logging.getLogger(__name__)

FCM_CHANNELS = 32
FCM_BLOCKS = (2, 2)
TDNN_CHANNELS = 128
GROWTH_RATE = 32
BN_SIZE = 4  # bottleneck channels of a dense layer: BN_SIZE x GROWTH_RATE
DENSE_BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation), kernel 3
CAM_REDUCTION = 2
SEGMENT_FRAMES = 100  # segment length of the context pooling of CAM


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(channels), nn.ReLU(inplace=True))


class FreqBasicBlock(nn.Module):
    """ResNet BasicBlock with a stride in frequency only: (B, C_in, F, T) -> (B, C_out, ceil(F / stride), T)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class FCM(nn.Module):
    """Front-end convolution module: log-mel (B, F, T) -> 2-D feature map (B, 32, F', T), F' = ceil(F / 8)."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, FCM_CHANNELS, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(FCM_CHANNELS)
        self.layer1, self.layer2 = (
            nn.Sequential(*(FreqBasicBlock(FCM_CHANNELS, FCM_CHANNELS, 2 if i == 0 else 1) for i in range(n)))
            for n in FCM_BLOCKS)
        self.conv2 = nn.Conv2d(FCM_CHANNELS, FCM_CHANNELS, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(FCM_CHANNELS)
        freq = n_mels
        for _ in range(3):  # three stride-2 convolutions with kernel 3, padding 1
            freq = (freq - 1) // 2 + 1
        self.out_dim = FCM_CHANNELS * freq

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(feats.unsqueeze(1))))  # (B, 32, F, T)
        x = self.layer2(self.layer1(x))  # (B, 32, F / 4, T)
        return torch.relu(self.bn2(self.conv2(x)))  # (B, 32, F', T)


def segment_means(x: torch.Tensor, seg_len: int) -> torch.Tensor:
    """(B, C, T) -> (B, C, T): the mean of each ``seg_len``-frame segment, repeated over its frames."""
    seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)  # (B, C, ceil(T / seg_len))
    return seg.unsqueeze(-1).expand(-1, -1, -1, seg_len).flatten(2)[..., :x.shape[-1]]


class CAMLayer(nn.Module):
    """Context-aware masking, (B, C_bn, T) -> (B, C_out, T): local Conv1d(x) * sigmoid(W2 ReLU(W1 (mean_t x + segment
    means)))."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size,
                                      padding=dilation * (kernel_size - 1) // 2, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // CAM_REDUCTION, 1)
        self.linear2 = nn.Conv1d(bn_channels // CAM_REDUCTION, out_channels, 1)
        self.seg_len = SEGMENT_FRAMES  # an attribute, so that TorchScript sees a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(dim=-1, keepdim=True) + segment_means(x, self.seg_len)  # (B, C_bn, T)
        mask = torch.sigmoid(self.linear2(torch.relu(self.linear1(context))))  # (B, C_out, T)
        return self.linear_local(x) * mask


class CAMDenseLayer(nn.Module):
    """BN -> ReLU -> Conv1d(1 x 1 -> bottleneck) -> BN -> ReLU -> CAM: (B, C_in, T) -> (B, growth, T)."""

    def __init__(self, in_channels: int, dilation: int) -> None:
        super().__init__()
        bn_channels = BN_SIZE * GROWTH_RATE
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, GROWTH_RATE, 3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseBlock(nn.ModuleList):
    """Dense connectivity: each layer's output is appended to its input. (B, C, T) -> (B, C + layers x 32, T)."""

    def __init__(self, in_channels: int, layers: int, dilation: int) -> None:
        super().__init__(CAMDenseLayer(in_channels + i * GROWTH_RATE, dilation) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class CAMPPlusEncoder(FrontEndEncoder):
    """Front-end, FCM head, CAM-dense TDNN trunk, pooling and embedding layer. wave (B, samples) -> (B, nOut)."""

    def __init__(self, *, nOut: int, encoder_type: str, n_mels: int, log_input: bool) -> None:
        super().__init__(nOut, n_mels, log_input)
        self.head = FCM(n_mels)
        self.tdnn = nn.Sequential(nn.Conv1d(self.head.out_dim, TDNN_CHANNELS, 5, stride=2, padding=2, bias=False),
                                  *_bn_relu(TDNN_CHANNELS))
        channels = TDNN_CHANNELS
        for i, (layers, dilation) in enumerate(DENSE_BLOCKS):
            self.add_module(f"block{i + 1}", CAMDenseBlock(channels, layers, dilation))
            channels += layers * GROWTH_RATE
            self.add_module(f"transit{i + 1}", nn.Sequential(*_bn_relu(channels),
                                                              nn.Conv1d(channels, channels // 2, 1, bias=False)))
            channels //= 2
        self.out_nonlinear = _bn_relu(channels)
        self.pooling = make_baseline_pooling(encoder_type, channels, False, "CAM++")
        self.fc = nn.Linear(self.pooling.out_dim, nOut, bias=False)
        self.bn = nn.BatchNorm1d(nOut, affine=False)
        for m in self.modules():  # the references' initialisation
            if isinstance(m, nn.Conv1d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.features(wave)  # (B, n_mels, T)
        x = self.head(feats).flatten(1, 2)  # (B, 32 F', T), feature c * F' + f
        x = self.transit1(self.block1(self.tdnn(x)))  # (B, 256, T'), T' = ceil(T / 2)
        x = self.transit3(self.block3(self.transit2(self.block2(x))))  # (B, 512, T')
        return self.bn(self.fc(self.pooling(self.out_nonlinear(x))))  # (B, nOut)
