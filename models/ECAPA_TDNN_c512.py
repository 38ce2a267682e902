"""ECAPA-TDNN with C = 512 channels, the 6.2M baseline (80 mels, ASP, nOut 192).

B. Desplanques, J. Thienpondt, K. Demuynck, "ECAPA-TDNN", Interspeech 2020; WeSpeaker's ``ECAPA_TDNN_GLOB_c512``.
"""

from models._ecapa import ECAPATDNN


class MainModel(ECAPATDNN):
    """wave (B, samples) at 16 kHz -> embedding (B, nOut)."""

    channels = 512
