"""The pure parts of the real-voice corpus: clip clean-up, the speaker split and balanced trial lists.

A *unit* is one voice (the speaker label of the lists); a *group* holds the units that may be one person (the same
language in two packages, or two recording sessions of one language folder). Groups never straddle splits, and a
non-target trial always pairs units of two different groups, so that no trial claims two voices differ when the
packages cannot tell. Everything here is deterministic for a given seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from dtdysv.data.audio import SAMPLE_RATE
from dtdysv.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FRAME = SAMPLE_RATE // 100  # 10-ms frames of the silence trimmer


class CorpusError(UserError):
    pass


# ---- clips -----------------------------------------------------------------------------------------------------------


def trim_silence(audio: np.ndarray, floor_db: float = -40.0, margin_s: float = 0.1) -> np.ndarray:
    """``audio`` (samples,) without its leading and trailing frames quieter than ``floor_db`` below the loudest 10-ms
    frame, keeping ``margin_s`` of context on each side; all-silent audio comes back empty."""
    frames = len(audio) // FRAME
    if frames == 0:
        return audio[:0]
    rms = np.sqrt(np.mean(audio[:frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2, axis=1))
    if rms.max() <= 0:
        return audio[:0]
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    margin = int(margin_s * SAMPLE_RATE)
    start = max(0, loud[0] * FRAME - margin)
    end = min(len(audio), (loud[-1] + 1) * FRAME + margin)
    return audio[start:end]


def join_clips(clips: Sequence[np.ndarray], target_s: float = 2.0, gap_s: float = 0.15) -> list[np.ndarray]:
    """Consecutive ``clips`` of one voice joined, with ``gap_s`` of silence between them, into utterances of at least
    ``target_s`` (the last one may be shorter): for packages of single syllables too short to use alone."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    out: list[np.ndarray] = []
    current: list[np.ndarray] = []
    length = 0
    for clip in clips:
        if current:
            current.append(gap)
        current.append(clip.astype(np.float32, copy=False))
        length += len(clip)
        if length >= target_s * SAMPLE_RATE:
            out.append(np.concatenate(current))
            current, length = [], 0
    if current:
        out.append(np.concatenate(current))
    return out


def median_f0(audio: np.ndarray, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """The median F0 in Hz of the clearly voiced 40-ms frames of ``audio`` (autocorrelation peak between ``fmin`` and
    ``fmax`` at least half the frame's energy), NaN if there are none: a listen-free look at who speaks."""
    frame, hop = int(0.04 * SAMPLE_RATE), FRAME
    count = (len(audio) - frame) // hop + 1
    if count <= 0:
        return float("nan")
    frames = audio[np.arange(frame)[None, :] + hop * np.arange(count)[:, None]].astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = (frames ** 2).sum(axis=1)
    frames = frames[energy > 0.05 * energy.max()]
    if not len(frames):
        return float("nan")
    corr = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]  # (frames, lags)
    low, high = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    lag = low + np.argmax(corr[:, low:high], axis=1)
    voiced = corr[np.arange(len(lag)), lag] >= 0.5 * corr[:, 0]
    return float(np.median(SAMPLE_RATE / lag[voiced])) if voiced.any() else float("nan")


def pitch_spread(f0s: Sequence[float]) -> float:
    """The ratio of the upper to the lower quartile of a voice's per-file median F0s (NaN ignored): near 1 for one
    voice, near 2 for a man and a child sharing a folder."""
    values = np.asarray(f0s, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 4:
        return float("nan")
    low, high = np.percentile(values, [25, 75])
    return float(high / low)


# ---- splits ----------------------------------------------------------------------------------------------------------


def assign_splits(groups: Mapping[str, Sequence[str]], test_fraction: float, val_fraction: float, seed: int,
                  seconds: Mapping[str, float] | None = None, slack: float = 1.2) -> dict[str, str]:
    """unit -> 'train', 'val' or 'test'. Groups (name -> units) are drawn in a seeded order; a group joins the test
    split while it holds fewer than ``test_fraction`` of the units, unless its audio (``seconds``: group -> seconds;
    default: its unit count) would take the split past ``slack`` x ``test_fraction`` of all the audio; the same for
    validation with ``val_fraction``; every other group trains. So a group of many long files cannot leave the
    training split short of audio. Test and validation get two groups at least (non-target trials need two): the
    training groups of least audio make up a shortfall."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise CorpusError(f"--test_fraction {test_fraction} and --val_fraction {val_fraction} must be in (0, 1) with "
                          f"a sum below 1.")
    names = sorted(groups)
    if len(names) < 5:
        raise CorpusError(f"Only {len(names)} speaker groups: a corpus needs at least 5 (two for the test split, two "
                          f"for validation, one to train on).")
    audio = {g: float(seconds[g]) if seconds is not None else float(len(groups[g])) for g in names}
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    total = sum(len(groups[g]) for g in names)
    total_audio = sum(audio.values())
    fraction = {"test": test_fraction, "val": val_fraction}
    split_of_group: dict[str, str] = {}
    units = {split: 0 for split in SPLITS}
    held = {split: 0.0 for split in SPLITS}
    for group in order:
        split = next((s for s in ("test", "val") if units[s] < fraction[s] * total
                      and held[s] + audio[group] <= slack * fraction[s] * total_audio), "train")
        split_of_group[group] = split
        units[split] += len(groups[group])
        held[split] += audio[group]
    for split in ("test", "val"):  # two groups at least: the least audio of the training groups moves over
        while sum(s == split for s in split_of_group.values()) < 2:
            training = sorted((audio[g], g) for g in order if split_of_group[g] == "train")
            if len(training) < 2:
                raise CorpusError(f"{len(names)} speaker groups do not fill the splits; lower --test_fraction "
                                  f"{test_fraction} or --val_fraction {val_fraction}, or add speakers.")
            split_of_group[training[0][1]] = split
    return {unit: split_of_group[g] for g in names for unit in groups[g]}


# ---- trials ----------------------------------------------------------------------------------------------------------


def _spread(capacity: Mapping[object, int], total: int) -> dict[object, int]:
    """``total`` shared as equally as the capacities allow (keys in sorted order take the remainders)."""
    quota = {key: 0 for key in capacity}
    remaining = total
    while remaining > 0:
        open_keys = [key for key in sorted(capacity) if quota[key] < capacity[key]]
        share = max(1, remaining // len(open_keys))
        for key in open_keys:
            add = min(share, capacity[key] - quota[key], remaining)
            quota[key] += add
            remaining -= add
            if remaining == 0:
                break
    return quota


def balanced_trials(files_of: Mapping[str, Sequence[str]], group_of: Mapping[str, str], n_trials: int,
                    seed: int) -> list[tuple[int, str, str]]:
    """(label, enroll, test) trials over the units of ``files_of`` (unit -> file names): half target (two files of
    one unit), half non-target (files of two units of different groups), each half spread as equally as possible
    over the units and over the unit pairs; no pair twice, enroll/test order random, sorted by (enroll, test)."""
    rng = np.random.default_rng(seed)
    units = sorted(u for u in files_of if files_of[u])
    files = {u: sorted(files_of[u]) for u in units}
    target_cap = {u: len(files[u]) * (len(files[u]) - 1) // 2 for u in units}
    cross = [(a, b) for i, a in enumerate(units) for b in units[i + 1:] if group_of[a] != group_of[b]]
    cross_cap = {pair: len(files[pair[0]]) * len(files[pair[1]]) for pair in cross}
    half = min(n_trials // 2, sum(target_cap.values()), sum(cross_cap.values()))
    if half < n_trials // 2:
        log.warning("only %d target and %d non-target pairs exist: the list has %d trials, not %d",
                    sum(target_cap.values()), sum(cross_cap.values()), 2 * half, n_trials)
    if half == 0:
        raise CorpusError(f"No balanced trial list over {len(units)} units: it needs a unit with two files and two "
                          f"units of different groups.")
    trials: list[tuple[int, str, str]] = []
    for unit, count in _spread(target_cap, half).items():
        n = len(files[unit])
        first, second = np.triu_indices(n, k=1)
        for k in rng.choice(len(first), count, replace=False) if count else ():
            trials.append((1, files[unit][first[k]], files[unit][second[k]]))
    for (a, b), count in _spread(cross_cap, half).items():
        nb = len(files[b])
        for k in rng.choice(cross_cap[(a, b)], count, replace=False) if count else ():
            trials.append((0, files[a][k // nb], files[b][k % nb]))
    swap = rng.random(len(trials)) < 0.5
    trials = [(label, t, e) if s else (label, e, t) for (label, e, t), s in zip(trials, swap, strict=True)]
    return sorted(trials, key=lambda trial: trial[1:])
