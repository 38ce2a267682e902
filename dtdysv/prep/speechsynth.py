"""Source-filter speech synthesis for the demo corpus: synthetic speakers and recording channels.

After the Klatt cascade formant synthesiser (D. H. Klatt, JASA 67(3), 1980): a Rosenberg glottal pulse train (A. E.
Rosenberg, JASA 49, 1971) with jitter, shimmer and aspiration excites time-varying formant resonators; fricatives and
bursts are band-passed noise. Speakers differ in F0, vocal-tract length, vowels, pulse shape, tilt, breathiness and
rate; each session and utterance has its own channel, level and noise (15-30 dB SNR). All randomness comes from the
generators passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from dtdysv.data.audio import SAMPLE_RATE

CONTROL_HOP = 80  # samples per control block (5 ms): formants, F0 and envelopes are set at this rate

# F1-F3 (Hz) of ten American English vowels, adult male averages (Peterson & Barney, JASA 24, 1952).
_VOWELS = np.array([[270, 2290, 3010], [390, 1990, 2550], [530, 1840, 2480], [660, 1720, 2410],
                    [730, 1090, 2440], [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240],
                    [640, 1190, 2390], [490, 1350, 1690]], dtype=np.float64)
_LOCI = np.array([[250, 900, 2200], [250, 1700, 2600], [250, 2000, 2300]], dtype=np.float64)  # labial/alveolar/velar
_BANDWIDTHS = np.array([60.0, 90.0, 120.0, 170.0, 220.0])  # F1..F5, scaled per speaker
_FRICATIVES = ((5500.0, 2500.0), (3000.0, 1600.0), (4000.0, 6000.0))  # centre, width (Hz): /s/, /sh/, /f/


@dataclass(frozen=True)
class Voice:
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
class Channel:
    """A session's recording chain."""

    sos: np.ndarray  # band limits and EQ
    room: np.ndarray | None  # impulse response, None for a dry room
    noise_tilt: float
    snr_db: float


def draw_voice(rng: np.random.Generator) -> Voice:
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
    return Voice(
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


def draw_channel(rng: np.random.Generator) -> Channel:
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
    return Channel(sos=np.concatenate(sos), room=room, noise_tilt=rng.uniform(-0.3, 0.9), snr_db=rng.uniform(15, 30))


def _resonator_sos(freq: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """(k, 6) Klatt resonators y[n] = A x[n] + B y[n-1] + C y[n-2], unit gain at DC; freq, bandwidth (k,) Hz."""
    c = -np.exp(-2 * np.pi * bandwidth / SAMPLE_RATE)
    b = 2 * np.exp(-np.pi * bandwidth / SAMPLE_RATE) * np.cos(2 * np.pi * freq / SAMPLE_RATE)
    zero = np.zeros_like(b)
    return np.stack([1 - b - c, zero, zero, zero + 1, -b, -c], axis=1)


def _formant_cascade(x: np.ndarray, freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Cascade of Klatt resonators whose frequencies change every control block.

    x: (n_blocks * CONTROL_HOP,); freqs: (n_blocks, k) Hz; bandwidths: (k,) Hz. Each resonator is computed as its
    partial fraction, a complex one-pole filter with a closed form (cumulative sum) within a block.
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


def _plan(voice: Voice, rng: np.random.Generator, seconds: float) -> _Plan:
    """Random syllables at control rate: formant targets (n, 3), voicing (n,), accents (n,), noise bursts; n = seconds /
    5 ms (rounded down)."""
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


def synthesize(voice: Voice, rng: np.random.Generator, seconds: float) -> np.ndarray:
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


def record(speech: np.ndarray, channel: Channel, rng: np.random.Generator) -> np.ndarray:
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
