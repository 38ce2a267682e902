"""ECAPA-TDNN with C = 512 channels, the 6.2M baseline (6,190,720 parameters at 80 mels, ASP, nOut 192).

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation
in TDNN Based Speaker Verification", Interspeech 2020 (Table 1: 6.2M); WeSpeaker's ``ECAPA_TDNN_GLOB_c512``.
"""

from models._ecapa import ECAPATDNN


class MainModel(ECAPATDNN):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut)."""

    channels = 512
