"""Synthetic multi-speaker corpus for the demo recipe (``make demo``): no download, a few minutes on a CPU.

Source-filter speech in the spirit of the Klatt cascade formant synthesiser (D. H. Klatt, "Software for a
cascade/parallel formant synthesizer", JASA 67(3), 1980): a Rosenberg glottal pulse train (A. E. Rosenberg,
JASA 49, 1971) with intonation, jitter, shimmer and aspiration noise excites a cascade of time-varying
second-order resonators (formants); fricatives and stop bursts are band-passed noise. Utterances are random
syllable sequences. Speakers differ the way voices do: F0 and intonation range, vocal-tract length (all formants
scaled), their own vowel qualities, glottal pulse shape and spectral tilt, breathiness, speaking rate. Every
session ("video") has its own channel (band limits, EQ, room, background noise colour and level) and every
utterance its own level, level drift, EQ and noise (15-30 dB SNR), so the task is learnable but not trivial.

Layout and lists follow VoxCeleb / voxceleb_trainer (REFERENCE.md section 5)::

    out_dir/train/wav/id00001/<video>/00001.wav    out_dir/train_list.txt   "<speaker> <path under train/wav>"
    out_dir/test/wav/id10001/<video>/00001.wav     out_dir/test_list.txt    "<label 0|1> <enroll> <test>"
    out_dir/demo_info.json                         settings and counts, written last (marks a complete corpus)

Test speakers are held out. Everything is drawn from generators seeded by (seed, split, speaker, ...), so the same
settings and seed give byte-identical files and a speaker's voice does not depend on how many others there are.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from config import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CONTROL_HOP = 80  # samples per control block (5 ms): formants, F0 and envelopes are set at this rate
GENERATOR_VERSION = 2  # bump when the synthesis changes, so old corpora are rebuilt
INFO_FILE = "demo_info.json"
_TRAIN, _TEST, _TRIALS = 0, 1, 2  # split codes in the seeds
_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))

# F1-F3 (Hz) of ten American English vowels, adult male averages (Peterson & Barney, JASA 24, 1952).
_VOWELS = np.array([[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
                    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
                    [640, 1190, 2390], [490, 1350, 1690]], dtype=np.float64)
_LOCI = np.array([[250, 900, 2200], [250, 1700, 2600], [250, 2000, 2300]], dtype=np.float64)  # labial/alveolar/velar
_BANDWIDTHS = np.array([60.0, 90.0, 120.0, 170.0, 220.0])  # F1..F5, scaled per speaker
_FRICATIVES = ((5500.0, 2500.0), (3000.0, 1600.0), (4000.0, 6000.0))  # centre, width (Hz): /s/, /sh/, /f/


class DemoCorpusError(UserError):
    pass


@dataclass(frozen=True)
class _Voice:
    """A synthetic speaker's fixed voice parameters."""

    f0_hz: float
    intonation_st: float  # intonation range in semitones
    jitter: float  # relative F0 perturbation per control block
    shimmer: float  # relative amplitude perturbation per glottal cycle
    vowels: np.ndarray  # (10, 3) the speaker's F1-F3 targets
    loci: np.ndarray  # (3, 3) consonant F1-F3 loci
    high_formants: np.ndarray  # (2,) fixed F4, F5
    bandwidths: np.ndarray  # (5,)
    open_quotient: float
    speed_quotient: float
    tilt: float  # one-pole low-pass coefficient on the glottal source
    breathiness: float  # aspiration noise RMS relative to the pulses
    syllable_s: float  # mean vowel duration (speaking rate)
    fricative_level: float
    fricatives: tuple[np.ndarray, ...]  # band-pass SOS per fricative kind


@dataclass(frozen=True)
class _Channel:
    """A session's recording chain."""

    sos: np.ndarray  # band limits and EQ
    room: np.ndarray | None  # impulse response, None for a dry room
    noise_tilt: float
    snr_db: float


def _draw_voice(rng: np.random.Generator) -> _Voice:
    female = rng.random() < 0.5
    f0 = np.exp(rng.uniform(np.log(160.0), np.log(260.0)) if female else rng.uniform(np.log(85.0), np.log(150.0)))
    vtl = float(np.clip(rng.normal(1.17 if female else 1.0, 0.09), 0.85, 1.35))  # formant scale ~ 1 / tract length
    scale = vtl * np.exp(rng.normal(0.0, 0.05, 3))  # F1..F3 scale a little differently (tract shape)
    vowels = _VOWELS * scale * np.exp(rng.normal(0.0, 0.12, _VOWELS.shape))  # the speaker's own vowel qualities
    fricatives = []
    for centre, width in _FRICATIVES:
        centre *= vtl * rng.uniform(0.9, 1.1)
        low, high = max(centre - width / 2, 500.0), min(centre + width / 2, 7800.0)
        fricatives.append(butter(2, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos"))
    return _Voice(
        f0_hz=float(f0), intonation_st=rng.uniform(1.0, 3.0), jitter=rng.uniform(0.003, 0.02),
        shimmer=rng.uniform(0.02, 0.12), vowels=vowels, loci=_LOCI * scale,
        high_formants=np.array([rng.uniform(3300, 3900), rng.uniform(4300, 5000)]) * vtl,
        bandwidths=_BANDWIDTHS * rng.uniform(0.7, 1.6), open_quotient=rng.uniform(0.4, 0.8),
        speed_quotient=rng.uniform(1.5, 4.0), tilt=rng.uniform(0.0, 0.85), breathiness=rng.uniform(0.02, 0.4),
        syllable_s=rng.uniform(0.09, 0.2), fricative_level=rng.uniform(0.1, 0.4), fricatives=tuple(fricatives))


def _peaking_sos(freq: float, gain_db: float, q: float) -> np.ndarray:
    """(1, 6) peaking-EQ biquad (RBJ audio EQ cookbook)."""
    a_gain, w0 = 10 ** (gain_db / 40), 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return np.concatenate([b, a])[None] / a[0]


def _draw_channel(rng: np.random.Generator) -> _Channel:
    sos = [butter(2, rng.uniform(50, 200), btype="highpass", fs=SAMPLE_RATE, output="sos"),
           butter(4, rng.uniform(5000, 7800), btype="lowpass", fs=SAMPLE_RATE, output="sos")]
    sos += [_peaking_sos(np.exp(rng.uniform(np.log(150), np.log(5000))), rng.uniform(-2, 2), rng.uniform(0.7, 2.5))
            for _ in range(2)]
    room = None
    if rng.random() < 0.15:
        rt60 = rng.uniform(0.15, 0.4)
        t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
        tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
        room = np.concatenate([[1.0], tail * rng.uniform(0.02, 0.08)])
    return _Channel(sos=np.concatenate(sos), room=room, noise_tilt=rng.uniform(-0.3, 0.9), snr_db=rng.uniform(15, 30))


def _resonator_sos(freq: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """(k, 6) Klatt resonators y[n] = A x[n] + B y[n-1] + C y[n-2], unit gain at DC; freq, bandwidth (k,) Hz."""
    c = -np.exp(-2 * np.pi * bandwidth / SAMPLE_RATE)
    b = 2 * np.exp(-np.pi * bandwidth / SAMPLE_RATE) * np.cos(2 * np.pi * freq / SAMPLE_RATE)
    zero = np.zeros_like(b)
    return np.stack([1 - b - c, zero, zero, zero + 1, -b, -c], axis=1)


def _formant_cascade(x: np.ndarray, freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of Klatt resonators whose frequencies change every control block.

    x: (n_blocks * CONTROL_HOP,); freqs: (n_blocks, k) Hz; bandwidths: (k,) Hz. A resonator
    A / ((1 - p z^-1)(1 - p* z^-1)), p = r e^(j theta), A = |1 - p|^2, equals its partial fraction
    y = Re(A e^(j theta) w / (j sin theta)) of the complex one-pole w[n] = p w[n-1] + x[n]. Within a block
    w is a closed form (cumulative sum), so only the block-to-block state is a loop: this is the per-block
    lfilter with carried state, without a Python call per block.
    """
    n_blocks = freqs.shape[0]
    m = np.arange(CONTROL_HOP)
    y = x.reshape(n_blocks, CONTROL_HOP)
    for k in range(freqs.shape[1]):
        theta = 2 * np.pi * freqs[:, k] / SAMPLE_RATE
        radius = np.exp(-np.pi * bandwidths[k] / SAMPLE_RATE)
        p = radius * np.exp(1j * theta)  # (n_blocks,)
        rotation = np.exp(1j * np.outer(theta, m))
        powers = radius**m * rotation  # p^m, (n_blocks, hop)
        zero_state = powers * np.cumsum(y * radius**-m * rotation.conj(), axis=1)  # w of each block from zero state
        decay, ends = (p**CONTROL_HOP).tolist(), zero_state[:, -1].tolist()
        state, carried = 0j, []
        for i in range(n_blocks):  # w at the end of the previous block
            carried.append(state)
            state = decay[i] * state + ends[i]
        w = zero_state + powers * (p * np.array(carried))[:, None]
        scale = np.abs(1 - p) ** 2 * np.exp(1j * theta) / (1j * np.sin(theta))
        y = np.real(scale[:, None] * w)
    return y.reshape(-1)


_Plan = tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]]]


def _plan(voice: _Voice, rng: np.random.Generator, seconds: float) -> _Plan:
    """Random syllables at control rate: formant targets (n, 3), voicing (n,), accents (n,), noise bursts
    (start block, blocks, fricative kind); n = seconds / 5 ms (rounded down) exactly."""
    n_total = int(seconds * SAMPLE_RATE / CONTROL_HOP)
    rate = rng.uniform(0.85, 1.15)  # this utterance's tempo around the speaker's

    def blocks(seconds_: float) -> int:
        return max(2, int(round(seconds_ * rate * SAMPLE_RATE / CONTROL_HOP)))

    silence = voice.loci[1]
    segments = [(blocks(rng.uniform(0.05, 0.2)), silence, 0.0, 0.0)]  # (blocks, F1-F3, voiced, accent)
    bursts: list[tuple[int, int, int]] = []
    pos, tail = segments[0][0], blocks(rng.uniform(0.05, 0.2))
    while True:  # syllables: [pause] [fricative | stop closure + burst] vowel, while they fit
        syllable, noise = [], []
        if rng.random() < 0.15 and len(segments) > 1:
            syllable.append((blocks(rng.uniform(0.1, 0.35)), silence, 0.0, 0.0))
        place, kind = int(rng.integers(3)), rng.random()
        if kind < 0.35:  # fricative
            syllable.append((blocks(rng.uniform(0.06, 0.13)), voice.loci[place], 0.0, 0.0))
            noise.append((len(syllable) - 1, int(rng.integers(3))))
        elif kind < 0.65:  # stop burst: labial /f/-like, alveolar /s/-like, velar /sh/-like
            syllable.append((blocks(rng.uniform(0.03, 0.07)), voice.loci[place], 0.0, 0.0))
            syllable.append((blocks(rng.uniform(0.01, 0.025)), voice.loci[place], 0.0, 0.0))
            noise.append((len(syllable) - 1, (2, 0, 1)[place]))
        vowel = voice.vowels[rng.integers(len(voice.vowels))] * np.exp(rng.normal(0.0, 0.03, 3))
        syllable.append((blocks(voice.syllable_s * rng.uniform(0.6, 1.6)), vowel, 1.0, rng.normal()))
        length = sum(seg[0] for seg in syllable)
        if pos + length + tail > n_total and len(segments) > 1:
            break
        starts = pos + np.cumsum([0] + [seg[0] for seg in syllable])
        bursts += [(int(starts[i]), syllable[i][0], fricative) for i, fricative in noise]
        segments += syllable
        pos += length
    segments.append((max(n_total - pos, 0), silence, 0.0, 0.0))
    counts = np.array([seg[0] for seg in segments])
    formants = np.repeat(np.stack([seg[1] for seg in segments]), counts, axis=0)[:n_total]
    voiced = np.repeat([seg[2] for seg in segments], counts)[:n_total]
    accents = np.repeat([seg[3] for seg in segments], counts)[:n_total]
    # a first syllable longer than a short utterance is cut (its vowel starts within 0.6 s), and its noise bursts
    bursts = [(start, min(length, n_total - start), kind) for start, length, kind in bursts if start < n_total]
    return formants, voiced, accents, bursts


def _speech(voice: _Voice, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Clean speech, float64 (samples,), unit RMS over the voiced part."""
    formants, voiced, accents, bursts = _plan(voice, rng, seconds)
    n_blocks = len(voiced)
    n = n_blocks * CONTROL_HOP
    formants = uniform_filter1d(formants, 7, axis=0, mode="nearest")  # ~35 ms formant transitions
    voiced = uniform_filter1d(voiced, 3, mode="nearest")
    # Intonation in semitones: utterance offset, declination, smoothed syllable accents, block-level jitter.
    semitones = (rng.normal(0.0, 0.4) + voice.intonation_st * np.linspace(0.5, -0.5, n_blocks)
                 + 0.5 * voice.intonation_st * uniform_filter1d(accents, 15, mode="nearest"))
    f0 = voice.f0_hz * 2 ** (semitones / 12) * (1 + voice.jitter * rng.standard_normal(n_blocks))
    centres, samples = (np.arange(n_blocks) + 0.5) * CONTROL_HOP, np.arange(n)
    phase = np.cumsum(np.interp(samples, centres, f0)) / SAMPLE_RATE
    cycle, p = phase.astype(np.int64), phase % 1.0
    # Rosenberg glottal flow: rises over t_p, falls over t_n, closed for the rest of the period.
    t_p = voice.open_quotient * voice.speed_quotient / (1 + voice.speed_quotient)
    t_n = voice.open_quotient - t_p
    flow = np.where(p < t_p, 0.5 * (1 - np.cos(np.pi * p / t_p)),
                    np.where(p < voice.open_quotient, np.cos(0.5 * np.pi * (p - t_p) / t_n), 0.0))
    flow *= 1 + voice.shimmer * rng.standard_normal(cycle[-1] + 1)[cycle]
    source = lfilter([1.0], [1.0, -voice.tilt], np.diff(flow, prepend=0.0))  # flow derivative + extra tilt
    envelope = np.interp(samples, centres, voiced)
    source /= np.sqrt(np.mean(source[envelope > 0.5] ** 2)) + 1e-12
    source += voice.breathiness * rng.standard_normal(n) * (p < voice.open_quotient)
    source *= envelope
    speech = _formant_cascade(source, formants, voice.bandwidths[:3])  # moving F1-F3, then the fixed F4, F5
    speech = sosfilt(_resonator_sos(voice.high_formants, voice.bandwidths[3:]), speech)
    speech /= np.sqrt(np.mean(speech[envelope > 0.5] ** 2)) + 1e-12
    for start, length, kind in bursts:
        noise = sosfilt(voice.fricatives[kind], rng.standard_normal(length * CONTROL_HOP))
        noise *= np.hanning(noise.size) / (np.sqrt(np.mean(noise**2)) + 1e-12)
        speech[start * CONTROL_HOP:(start + length) * CONTROL_HOP] += voice.fricative_level * noise
    return speech


def _record(speech: np.ndarray, channel: _Channel, rng: np.random.Generator) -> np.ndarray:
    """Session channel plus per-utterance EQ, noise and level; int16 (samples,)."""
    x = speech if channel.room is None else fftconvolve(speech, channel.room)[: speech.size]
    x = sosfilt(np.concatenate([channel.sos, _peaking_sos(np.exp(rng.uniform(np.log(200), np.log(4000))),
                                                          rng.normal(0.0, 1.5), 1.0)]), x)
    active = np.abs(speech) > 0.1 * np.sqrt(np.mean(speech**2))
    noise = lfilter([1.0], [1.0, -channel.noise_tilt], rng.standard_normal(x.size))
    snr_db = np.clip(channel.snr_db + rng.normal(0.0, 2.0), 15.0, 30.0)
    noise *= np.sqrt(np.mean(x[active] ** 2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    x = (x + noise) * 10 ** (np.linspace(0.0, rng.uniform(-4.0, 4.0), x.size) / 20)  # slow level drift
    x *= 10 ** (rng.uniform(-32.0, -18.0) / 20) / np.sqrt(np.mean(x**2))  # utterance level (dBFS RMS)
    x *= min(1.0, 0.98 / np.max(np.abs(x)))
    return np.round(x * 32767).astype(np.int16)


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        video = "".join(rng.choice(_ALPHABET, 11))
        if video not in ids:
            ids.append(video)
    return ids


def _write_speakers(wav_dir: Path, speakers: list[str], split: int, utts: int, videos: int,
                    min_seconds: float, max_seconds: float, seed: int) -> tuple[list[tuple[int, str]], float]:
    """Synthesise and write every utterance of a split; returns ((speaker index, relative path), ...), seconds."""
    files, total = [], 0.0
    for s, speaker in enumerate(speakers):
        voice = _draw_voice(np.random.default_rng([seed, split, s, 0]))
        video_ids = _video_ids(np.random.default_rng([seed, split, s, 1]), videos)
        channels = [_draw_channel(np.random.default_rng([seed, split, s, 2, v])) for v in range(videos)]
        for u in range(utts):
            v = u * videos // utts  # consecutive utterances share a session, numbered per video as in VoxCeleb
            first_in_video = -(-v * utts // videos)  # smallest u of video v
            rng = np.random.default_rng([seed, split, s, 3, u])
            audio = _record(_speech(voice, rng, rng.uniform(min_seconds, max_seconds)), channels[v], rng)
            rel = f"{speaker}/{video_ids[v]}/{u - first_in_video + 1:05d}.wav"
            (wav_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(wav_dir / rel, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            files.append((s, rel))
            total += audio.size / SAMPLE_RATE
    return files, total


def _trials(files: list[tuple[int, str]], n_trials: int, seed: int) -> list[tuple[int, str, str]]:
    """Balanced target / non-target pairs of distinct files, sorted by (enroll, test)."""
    rng = np.random.default_rng([seed, _TRIALS])
    first, second = np.triu_indices(len(files), k=1)
    speaker = np.array([f[0] for f in files])
    same = speaker[first] == speaker[second]
    chosen = []
    for mask, count in ((same, n_trials // 2), (~same, n_trials - n_trials // 2)):
        candidates = np.flatnonzero(mask)
        chosen.append(rng.choice(candidates, min(count, candidates.size), replace=False))
    if len(chosen[0]) < n_trials // 2:
        log.warning("only %d target pairs exist; the trial list has %d target trials, not %d",
                    len(chosen[0]), len(chosen[0]), n_trials // 2)
    pairs = np.concatenate(chosen)
    swap = rng.random(pairs.size) < 0.5
    enroll = np.where(swap, second[pairs], first[pairs])
    test = np.where(swap, first[pairs], second[pairs])
    trials = [(int(same[k]), files[e][1], files[t][1]) for k, e, t in zip(pairs, enroll, test, strict=True)]
    return sorted(trials, key=lambda trial: trial[1:])


def _write_text(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def read_demo_info(out_dir: Path) -> dict[str, Any] | None:
    """The corpus' ``demo_info.json``, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(out_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def demo_corpus_complete(out_dir: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out_dir`` holds a complete corpus made with ``settings`` (keyword arguments of
    :func:`make_demo_corpus`, the others at their defaults) by this generator version, every listed file present."""
    out_dir = Path(out_dir)
    info = read_demo_info(out_dir)
    if not info or not info.get("complete") or info.get("generator_version") != GENERATOR_VERSION:
        return False
    parameters = inspect.signature(make_demo_corpus).parameters
    wanted = {name: settings.get(name, p.default) for name, p in parameters.items() if name != "out_dir"}
    if info.get("settings") != json.loads(json.dumps(wanted)):
        return False
    try:
        train = [line.split()[1] for line in (out_dir / "train_list.txt").read_text().splitlines()]
        test = {p for line in (out_dir / "test_list.txt").read_text().splitlines() for p in line.split()[1:]}
    except (OSError, IndexError):
        return False
    return (len(train) == info.get("n_train_utterances") and len(test) > 0
            and all((out_dir / "train" / "wav" / p).is_file() for p in train)
            and all((out_dir / "test" / "wav" / p).is_file() for p in test))


def make_demo_corpus(out_dir: Path, n_train_speakers: int = 40, n_test_speakers: int = 10,
                     utts_per_speaker: int = 16, test_utts_per_speaker: int = 8, videos_per_speaker: int = 4,
                     n_trials: int = 400, min_seconds: float = 2.0, max_seconds: float = 4.0,
                     seed: int = 0) -> dict[str, Any]:
    """Write the demo corpus to ``out_dir`` (see the module docstring) and return a summary.

    Any earlier demo corpus in ``out_dir`` (one with a ``demo_info.json``) is replaced; a ``train/wav`` or
    ``test/wav`` that is not a demo corpus is an error rather than something to delete.
    """
    settings = {k: v for k, v in locals().items() if k != "out_dir"}
    checks = [("n_train_speakers", n_train_speakers, 2, 9999), ("n_test_speakers", n_test_speakers, 2, 9999),
              ("utts_per_speaker", utts_per_speaker, 1, 99999),
              ("test_utts_per_speaker", test_utts_per_speaker, 2, 99999),
              ("videos_per_speaker", videos_per_speaker, 1, min(utts_per_speaker, test_utts_per_speaker)),
              ("n_trials", n_trials, 2, 10**7)]
    for name, value, low, high in checks:
        if not isinstance(value, int) or not low <= value <= high:
            raise DemoCorpusError(f"demo corpus: {name}={value!r} must be an integer in [{low}, {high}]")
    if not 1.0 <= min_seconds <= max_seconds <= 60.0:
        raise DemoCorpusError(f"demo corpus: need 1 <= min_seconds <= max_seconds <= 60, got "
                              f"min_seconds={min_seconds}, max_seconds={max_seconds}")
    out_dir = Path(out_dir)
    train_wav, test_wav = out_dir / "train" / "wav", out_dir / "test" / "wav"
    if read_demo_info(out_dir) is None and (train_wav.exists() or test_wav.exists()):
        raise DemoCorpusError(f"{out_dir} already has train/wav or test/wav but no {INFO_FILE}: it is not a demo "
                              "corpus; choose an empty or new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"generator_version": GENERATOR_VERSION, "settings": settings, "complete": False}
    _write_text(out_dir / INFO_FILE, [json.dumps(info, indent=1, sort_keys=True)])
    for old in (train_wav.parent, test_wav.parent):
        shutil.rmtree(old, ignore_errors=True)
    start = time.perf_counter()
    train_speakers = [f"id{1 + i:05d}" for i in range(n_train_speakers)]
    test_speakers = [f"id{10001 + i:05d}" for i in range(n_test_speakers)]
    train, train_s = _write_speakers(train_wav, train_speakers, _TRAIN, utts_per_speaker, videos_per_speaker,
                                     min_seconds, max_seconds, seed)
    test, test_s = _write_speakers(test_wav, test_speakers, _TEST, test_utts_per_speaker, videos_per_speaker,
                                   min_seconds, max_seconds, seed)
    trials = _trials(test, n_trials, seed)
    _write_text(out_dir / "train_list.txt", sorted(f"{train_speakers[s]} {rel}" for s, rel in train))
    _write_text(out_dir / "test_list.txt", [f"{label} {e} {t}" for label, e, t in trials])
    info.update(complete=True, n_train_speakers=n_train_speakers, n_train_utterances=len(train),
                n_test_speakers=n_test_speakers, n_test_utterances=len(test), n_trials=len(trials),
                n_target_trials=sum(t[0] for t in trials), train_hours=round(train_s / 3600, 4),
                test_hours=round(test_s / 3600, 4))
    _write_text(out_dir / INFO_FILE, [json.dumps(info, indent=1, sort_keys=True)])
    summary = {k: v for k, v in info.items() if k not in ("complete", "generator_version")}
    summary.update(out_dir=str(out_dir), train_path=str(train_wav), test_path=str(test_wav),
                   train_list=str(out_dir / "train_list.txt"), test_list=str(out_dir / "test_list.txt"),
                   elapsed_s=round(time.perf_counter() - start, 2))
    log.info("demo corpus in %s: %d train speakers / %d utterances (%.2f h), %d test speakers / %d utterances, "
             "%d trials (%d target), %.1f s", out_dir, n_train_speakers, len(train), train_s / 3600,
             n_test_speakers, len(test), len(trials), summary["n_target_trials"], summary["elapsed_s"])
    return summary
