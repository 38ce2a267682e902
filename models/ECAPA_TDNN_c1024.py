"""ECAPA-TDNN with C = 1024 channels, the 14.7M baseline (14,657,088 parameters at 80 mels, ASP, nOut 192).

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN: Emphasized Channel Attention, Propagation and Aggregation
in TDNN Based Speaker Verification", Interspeech 2020 (Table 1: 14.7M); WeSpeaker's ``ECAPA_TDNN_GLOB_c1024``.
"""

from models._ecapa import ECAPATDNN


class MainModel(ECAPATDNN):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut)."""

    channels = 1024
