"""ECAPA-TDNN with C = 1024 channels, the 14.7M baseline (14,657,088 parameters at 80 mels, ASP, nOut 192).

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation
in TDNN Based Speaker Verification", Interspeech 2020 (Table 1: 14.7M); WeSpeaker's ``ECAPA_TDNN_GLOB_c1024``.
"""

from config import DEFAULTS
from models._ecapa import ECAPATDNN


class MainModel(ECAPATDNN):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut); encoder_type ASP (the paper's), STP or AVG."""

    def __init__(self, nOut: int = 192, encoder_type: str = "ASP", n_mels: int = 80,
                 log_input: bool = DEFAULTS.log_input) -> None:  # the paper's settings: MainModel() is its model
        super().__init__(channels=1024, nOut=nOut, encoder_type=encoder_type, n_mels=n_mels, log_input=log_input)
