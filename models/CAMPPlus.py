"""CAM++, the 7.2M baseline (80 mels, STP, nOut 512).

H. Wang, S. Zheng, Y. Chen, L. Cheng, Q. Chen, "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023; 3D-Speaker's and WeSpeaker's ``CAMPPlus``.
"""

from config import DEFAULTS
from models._campplus import CAMPPlusEncoder


class MainModel(CAMPPlusEncoder):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut); encoder_type STP (the paper's), ASP or AVG."""

    def __init__(self, nOut: int = 512, encoder_type: str = "STP", n_mels: int = 80,
                 log_input: bool = DEFAULTS.log_input) -> None:  # the paper's settings: MainModel() is its model
        super().__init__(nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input)
