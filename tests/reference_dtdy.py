"""The straightforward DTDY formulation, as the official DTDY-CNN code writes it (arXiv 2203.15277).

Frequency-major layout (B, C, F, T) in default (NCHW) memory, separate convolutions for W0 and Q, the
per-time-bin mixing as an einsum, P as a 1 x 1 convolution, BatchNorm modules in both modes. Module and
parameter names follow the official code, so ``ReferenceResNet(...).state_dict()`` has exactly the official key
names and shapes (the format ``models/_official.py`` converts). Used as the baseline of bench/model_speed.py and
as an independent reference in the tests; not a plugin.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from models._dtdy import hard_sigmoid2, latent_size, phi_hidden_size
from models._frontend import log_mel, make_mel_spectrogram
from models._resnet import STAGE_STRIDES

log = logging.getLogger(__name__)


class SEModule(nn.Module):
    """h * hsig(Conv1d(H -> H, 1)(h)), (B, H, T) -> (B, H, T)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Conv1d(channels, channels, 1, bias=False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * hard_sigmoid2(self.fc(h))


class ReferencePhi(nn.Module):
    """x (B, C_in, F, T) -> phi (B, L, L, T'), phi[b, d, j, t]."""

    def __init__(self, in_channels: int, freq_size: int, latent: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = phi_hidden_size(latent)
        self.latent = latent
        self.fc1 = nn.Conv1d(in_channels + freq_size, hidden, kernel_size, stride, (kernel_size - 1) // 2)
        self.semodule = SEModule(hidden)
        self.fc2 = nn.Conv1d(hidden, latent * latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([x.mean(dim=2), x.mean(dim=1)], dim=1)  # (B, C_in + F, T)
        phi = hard_sigmoid2(self.fc2(self.semodule(self.fc1(u))))
        return phi.view(x.shape[0], self.latent, self.latent, -1)


class ReferenceDTDYConv2d(nn.Module):
    """x (B, C_in, F, T) -> y (B, C_out, F', T'), y = W0 * x + P (BN_b(Phi(t) z) + z), z = BN_a(Q * x)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, freq_size: int) -> None:
        super().__init__()
        latent = latent_size(in_channels, out_channels)
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.q = nn.Conv2d(in_channels, latent, kernel_size, stride, padding, bias=False)
        self.p = nn.Conv2d(latent, out_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(latent)
        self.bn2 = nn.BatchNorm2d(latent)
        self.fc_phi = ReferencePhi(in_channels, freq_size, latent, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv(x)
        phi = self.fc_phi(x)  # (B, L, L, T')
        z = self.bn1(self.q(x))  # (B, L, F', T')
        m = torch.einsum("bdjt,bjft->bdft", phi, z)
        return r + self.p(self.bn2(m) + z)


class ReferenceBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, freq_size: int) -> None:
        super().__init__()
        self.conv1 = ReferenceDTDYConv2d(in_channels, out_channels, 3, stride, freq_size)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = ReferenceDTDYConv2d(out_channels, out_channels, 3, 1, (freq_size - 1) // stride + 1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(ReferenceDTDYConv2d(in_channels, out_channels, 1, stride, freq_size),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ReferenceResNet(nn.Module):
    """DTDY-ResNet in the official layout and naming. wave (B, samples) -> (B, nOut); SAP, ASP or AVG."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], nOut: int, encoder_type: str,
                 n_mels: int, log_input: bool = True) -> None:
        super().__init__()
        if encoder_type not in ("SAP", "ASP", "AVG"):
            raise ValueError(f"The reference model has SAP, ASP and AVG pooling, got '{encoder_type}'.")
        self.encoder_type, self.log_input = encoder_type, log_input
        self.torchfb = nn.Sequential(make_mel_spectrogram(n_mels))  # keys torchfb.0.*, as the official model's
        self.conv1 = nn.Conv2d(1, widths[0], 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        freq, channels = (n_mels - 1) // 2 + 1, widths[0]
        for stage, (width, depth, stride) in enumerate(zip(widths, depths, STAGE_STRIDES, strict=True)):
            blocks = []
            for i in range(depth):
                blocks.append(ReferenceBlock(channels, width, stride if i == 0 else 1, freq))
                freq, channels = (freq - 1) // (stride if i == 0 else 1) + 1, width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        dim = channels * freq
        if encoder_type != "AVG":
            self.attention = nn.Sequential(nn.Conv1d(dim, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                           nn.Conv1d(128, dim, 1), nn.Softmax(dim=2))
        self.fc = nn.Linear(2 * dim if encoder_type == "ASP" else dim, nOut)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = log_mel(self.torchfb, wave, self.log_input).unsqueeze(1)  # (B, 1, n_mels, T)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, C3 * F', T')
        if self.encoder_type == "AVG":
            return self.fc(x.mean(dim=2))
        w = self.attention(x)
        mu = torch.sum(x * w, dim=2)
        if self.encoder_type == "SAP":
            return self.fc(mu)
        sg = torch.sqrt((torch.sum(x * x * w, dim=2) - mu * mu).clamp(min=1e-5))
        return self.fc(torch.cat([mu, sg], dim=1))


def reference_conv_from(conv: nn.Module) -> ReferenceDTDYConv2d:
    """A ReferenceDTDYConv2d holding the weights of a models._dtdy.DTDYConv2d (kernels transposed to (F, T))."""
    ref = ReferenceDTDYConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.freq_size).to(conv.w0.dtype)
    with torch.no_grad():
        ref.conv.weight.copy_(conv.w0.transpose(2, 3))
        ref.q.weight.copy_(conv.q.transpose(2, 3))
        ref.p.weight.copy_(conv.p.view_as(ref.p.weight))
        ref.bn1.load_state_dict(conv.bn_latent.state_dict())
        ref.bn2.load_state_dict(conv.bn_mix.state_dict())
        ref.fc_phi.fc1.load_state_dict(conv.phi.conv_in.state_dict())
        ref.fc_phi.semodule.fc[0].load_state_dict(conv.phi.gate.state_dict())
        ref.fc_phi.fc2.load_state_dict(conv.phi.conv_out.state_dict())
    return ref.train(conv.training)


def time_major(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, C, T, F) in channels-last memory, the layout of models._dtdy."""
    return x.transpose(2, 3).contiguous(memory_format=torch.channels_last)

