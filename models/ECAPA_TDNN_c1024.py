"""ECAPA-TDNN with C = 1024 channels, the 14.7M baseline (80 mels, ASP, nOut 192).

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN", Interspeech 2020; WeSpeaker's ``ECAPA_TDNN_GLOB_c1024``.
"""

from models._ecapa import ECAPATDNN


class MainModel(ECAPATDNN):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut)."""

    channels = 1024
