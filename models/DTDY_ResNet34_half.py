"""DTDY-ResNet-34 (x0.50).

S.-H. Kim, H. Nam, Y.-H. Park, "Decomposed Temporal Dynamic CNN: Efficient Time-Adaptive Network for
Text-Independent Speaker Verification Explained with Speaker Activation Map", arXiv 2203.15277 (2022).
"""

from config import DEFAULTS
from models._resnet import RESNET34_DEPTHS, WIDTHS_HALF, ResNetSpeakerEncoder


class MainModel(ResNetSpeakerEncoder):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut)."""

    def __init__(self, nOut: int = DEFAULTS.nOut, encoder_type: str = DEFAULTS.encoder_type,
                 n_mels: int = DEFAULTS.n_mels, log_input: bool = DEFAULTS.log_input) -> None:
        super().__init__(widths=WIDTHS_HALF, depths=RESNET34_DEPTHS, dynamic=True, nOut=nOut,
                         encoder_type=encoder_type, n_mels=n_mels, log_input=log_input)
