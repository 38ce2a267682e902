"""Training-data augmentation: MUSAN noise, music and babble, RIR reverberation, and SpecAugment.

voxceleb_trainer's recipe: with probability ``aug_prob`` a crop gets one of reverberation, music (5-15 dB SNR), babble
(3-7 speakers, 13-20 dB) or noise (0-15 dB). Sources: MUSAN (D. Snyder, G. Chen, D. Povey, arXiv 1510.08484) in 5-s
chunks, ``musan_path/<noise|speech|music>/**.wav``; simulated RIRs (T. Ko et al., ICASSP 2017),
``rir_path/{smallroom,mediumroom}/**.wav``. SpecAugment (D. S. Park et al., arXiv 1904.08779) masks the log-mels inside
the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.signal import fftconvolve

from dtdysv.data.audio import read_audio, read_segment
from dtdysv.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("none", "reverb", "music", "speech", "noise")  # one per crop; all but "none" equally likely
NOISE_TYPES = ("noise", "speech", "music")  # the folders of musan_path
SNR_DB = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}  # uniform, per source
SOURCES = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}  # sources mixed in, inclusive range
RIR_ROOMS = ("smallroom", "mediumroom")  # the folders of rir_path
POWER_EPS = 1e-10  # added to mean powers: silent signals give finite levels, audible ones exact SNRs


class AugmentError(UserError):
    pass


@dataclass
class Plan:
    """One crop's augmentation: ``kind`` from KINDS, its source files, and one SNR (dB) per noise source."""

    kind: str
    files: list[str]
    snr_db: list[float]


def power_db(x: np.ndarray) -> np.ndarray:
    """Mean power in dB over the last axis."""
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64), axis=-1) + POWER_EPS)


def add_noise(clean: np.ndarray, noises: np.ndarray, snr_db: np.ndarray) -> np.ndarray:
    """clean (S,) + noises (K, S), source k scaled to ``snr_db[k]`` dB below the clean power -> (S,) float32."""
    gains = 10 ** ((power_db(clean) - power_db(noises) - np.asarray(snr_db, dtype=np.float64)) / 20)  # (K,)
    return (clean + gains @ noises).astype(np.float32)


def reverberate(clean: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """clean (S,) convolved with the unit-energy ``rir`` (L,), cut to the first S samples -> (S,) float32."""
    rir = rir / np.sqrt(np.sum(np.square(rir, dtype=np.float64)) + POWER_EPS)
    return fftconvolve(clean, rir)[:len(clean)].astype(np.float32)


def _scan(root: Path, folders: tuple[str, ...]) -> tuple[dict[str, list[str]], list[str]]:
    found, missing = {}, []
    for name in folders:
        files = sorted(str(p) for p in (root / name).rglob("*.wav")) if (root / name).is_dir() else []
        if files:
            found[name] = files
        else:
            missing.append(str(root / name))
    return found, missing


class Augmenter:
    """voxceleb_trainer's augmentation of training crops. Construction fails with one error when the folders are missing
    or empty; randomness comes from the generator passed to each call."""

    def __init__(self, musan_path: str | Path, rir_path: str | Path, resample: bool = False,
                 aug_prob: float = 0.8) -> None:
        if not 0.0 <= aug_prob <= 1.0:
            raise AugmentError(f"--aug_prob is a probability in [0, 1], got {aug_prob}.")
        self.resample, self.aug_prob = resample, aug_prob
        self.noise, musan_missing = _scan(Path(musan_path), NOISE_TYPES)
        rooms, rir_missing = _scan(Path(rir_path), RIR_ROOMS)
        problems = []
        if musan_missing:
            problems.append(
                f"--augment needs MUSAN split into 5-s chunks under --musan_path '{musan_path}' (folders "
                f"{', '.join(NOISE_TYPES)} of .wav files); missing or without .wav files: {', '.join(musan_missing)}. "
                f"Make it with `python dataprep.py --split_musan <musan folder> --musan_split_to {musan_path}`.")
        if rir_missing:
            problems.append(
                f"--augment needs the simulated RIRs under --rir_path '{rir_path}' (folders {', '.join(RIR_ROOMS)} of "
                f".wav files); missing or without .wav files: {', '.join(rir_missing)}. Make it with "
                f"`python dataprep.py --prepare_rir <RIRS_NOISES folder> --rir_to {rir_path}`.")
        if problems:
            raise AugmentError("\n".join(problems))
        self.rirs = [f for room in RIR_ROOMS for f in rooms[room]]
        log.info("augmentation: %s noise files, %d RIRs",
                 ", ".join(f"{len(self.noise[t])} {t}" for t in NOISE_TYPES), len(self.rirs))

    def draw(self, rng: np.random.Generator) -> Plan:
        """Choose the augmentation of one crop."""
        if rng.random() >= self.aug_prob:
            return Plan("none", [], [])
        kind = KINDS[1 + int(rng.integers(len(KINDS) - 1))]
        if kind == "reverb":
            return Plan(kind, [self.rirs[int(rng.integers(len(self.rirs)))]], [])
        low, high = SOURCES[kind]
        pool = self.noise[kind]
        count = min(int(rng.integers(low, high + 1)), len(pool))
        files = [pool[int(i)] for i in rng.choice(len(pool), size=count, replace=False)]
        return Plan(kind, files, [float(rng.uniform(*SNR_DB[kind])) for _ in files])

    def load(self, plan: Plan, samples: int, rng: np.random.Generator) -> np.ndarray:
        """The plan's sources: noises (K, samples) (random crops, short files repeated), the RIR (L,), or (0,)."""
        if plan.kind == "reverb":
            return read_audio(plan.files[0], self.resample, "a --rir_path file")
        if plan.kind == "none":
            return np.zeros(0, dtype=np.float32)
        return np.stack([read_segment(f, samples, rng, self.resample, where="a --musan_path file")
                         for f in plan.files])

    @staticmethod
    def apply(audio: np.ndarray, plan: Plan, sources: np.ndarray) -> np.ndarray:
        """audio (S,) augmented as planned with the loaded ``sources`` -> (S,) float32."""
        if plan.kind == "none":
            return audio
        if plan.kind == "reverb":
            return reverberate(audio, sources)
        return add_noise(audio, sources, np.array(plan.snr_db))

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One crop (S,) float32 -> augmented (S,) float32 (NumPy; the DataLoader workers run this)."""
        plan = self.draw(rng)
        return self.apply(audio, plan, self.load(plan, len(audio), rng))


def spec_augment(feats: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int, time_width: int,
                 prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment without time warping (WeSpeaker's ``spec_aug``): feats (B, F, T) -> a (B, F, T) copy with zeroed
    frequency and time bands, per utterance with probability ``prob``."""
    if min(freq_masks, time_masks) < 0 or min(freq_width, time_width) < 1 or not 0.0 <= prob <= 1.0:
        raise AugmentError(f"SpecAugment needs --spec_freq_masks and --spec_time_masks >= 0, --spec_freq_width and "
                           f"--spec_time_width >= 1 and --spec_prob in [0, 1]; got masks {freq_masks}, {time_masks}, "
                           f"widths {freq_width}, {time_width}, prob {prob}.")
    batch, n_freq, n_time = feats.shape
    device = feats.device

    def bands(count: int, width: int, size: int) -> torch.Tensor:  # (B, size) True where masked
        if count == 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        start = torch.randint(0, size, (batch, count, 1), generator=generator, device=device)
        length = torch.randint(1, width + 1, (batch, count, 1), generator=generator, device=device)
        pos = torch.arange(size, device=device)
        return ((pos >= start) & (pos < start + length)).any(dim=1)

    apply = torch.rand(batch, generator=generator, device=device) < prob  # (B,)
    freq = bands(freq_masks, freq_width, n_freq) & apply[:, None]  # (B, F)
    time = bands(time_masks, time_width, n_time) & apply[:, None]  # (B, T)
    return feats.masked_fill(freq[:, :, None] | time[:, None, :], 0.0)
