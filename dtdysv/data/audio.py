"""Audio constants and I/O: 16 kHz mono, partial reads, 16-bit wav output.

A crop of ``frames`` mel frames (hop 10 ms, window 25 ms) is ``frames * 160 + 240`` samples. Other rates or channel
counts are an error naming the file, or with ``resample`` are resampled (polyphase) and downmixed. Speech shorter
than ``MIN_SAMPLES`` (0.1 s), truncated files and NaN or infinite samples are errors too, everywhere alike.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_path

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
RESAMPLE_PAD = 64  # file samples read beyond a resampled crop on each side: no filter transient at its edges
MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s, 11 mel frames: the shortest speech read (training, evaluation, API)
# libsndfile's header log of a wav whose data chunk runs past the end of the file: 'data : 32000 (should be 15978)'
_TRUNCATED = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMED = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # data sizes of a wav written to a pipe: the length was never filled in


class AudioError(UserError):
    pass


def crop_samples(frames: int) -> int:
    """Samples of a crop of ``frames`` frames: 200 frames -> 32,240 samples (2 s)."""
    return frames * HOP_LENGTH + WIN_LENGTH - HOP_LENGTH


def _describe(path: str | Path, where: str) -> str:
    return f"'{path}' ({where})" if where else f"'{path}'"


def open_audio(path: str | Path, resample: bool = False, where: str = "", min_samples: int = 1) -> soundfile.SoundFile:
    """An open audio file; refuses undecodable, empty, truncated, shorter than ``min_samples`` or (unless
    ``resample``) non-16 kHz-mono files, naming ``where`` ('line N of <list>')."""
    try:
        f = soundfile.SoundFile(path)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise AudioError(f"Cannot decode audio file {_describe(path, where)}: {err}") from None
    problem = ""
    truncated = _TRUNCATED.search(f.extra_info) if f.format in ("WAV", "WAVEX") else None
    if f.frames <= 0:
        problem = "is empty."
    elif truncated and int(truncated.group(1)) not in _STREAMED and int(truncated.group(1)) > int(truncated.group(2)):
        problem = (f"is truncated: its header promises {truncated.group(1)} bytes of samples but the file holds "
                   f"{truncated.group(2)}. Copy or convert it again.")
    elif f.frames * SAMPLE_RATE < min_samples * f.samplerate:
        problem = (f"is {f.frames / f.samplerate:.4f} s long, shorter than the {min_samples / SAMPLE_RATE:g} s "
                   f"({min_samples} samples at {SAMPLE_RATE} Hz) that speech must last: remove it, or use a longer "
                   f"recording.")
    elif not resample and (f.samplerate != SAMPLE_RATE or f.channels != 1):
        problem = (f"is {f.samplerate} Hz with {f.channels} channel(s); expected {SAMPLE_RATE} Hz mono: convert it "
                   f"with `dataprep.py --convert`, or set --resample to resample and downmix while reading.")
    if problem:
        f.close()
        raise AudioError(f"Audio file {_describe(path, where)} {problem}")
    return f


def _read(f: soundfile.SoundFile, start: int = 0, frames: int = -1, where: str = "") -> np.ndarray:
    """Samples [start, start + frames) of the open file ``f``, (n,) float32, channels averaged."""
    try:
        f.seek(start)
        audio = f.read(frames, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise AudioError(f"Cannot decode audio file {_describe(f.name, where)}: {err}") from None
    expected = f.frames - start if frames < 0 else min(frames, f.frames - start)
    if len(audio) < expected and f.format != "MPEG":  # an MP3's length in frames is an estimate
        raise AudioError(f"Audio file {_describe(f.name, where)} has {len(audio)} samples from sample {start} on, "
                         f"although its header promises {expected}: it is truncated. Copy or convert it again.")
    finite = np.isfinite(audio)
    if not finite.all():
        first = start + int(np.argmin(finite.all(axis=1)))
        raise AudioError(f"Audio file {_describe(f.name, where)} holds NaN or infinite samples (the first at sample "
                         f"{first}, {first / f.samplerate:.3f} s): audio must be finite; fix or remove the file.")
    return audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)


def _resample(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    if up == down:
        return audio
    return resample_poly(audio, up, down).astype(np.float32, copy=False)


def read_segment(path: str, samples: int, rng: np.random.Generator, resample: bool = False,
                 speed: Fraction = Fraction(1), where: str = "", min_samples: int = 1) -> np.ndarray:
    """A random (samples,) float32 16 kHz segment, by a partial read; short files repeat to length. ``speed`` > 1 plays
    faster (spans ``speed`` times as much of the file)."""
    with open_audio(path, resample, where, min_samples) as f:
        ratio = Fraction(f.samplerate) * Fraction(speed) / SAMPLE_RATE  # file samples per output sample
        if ratio == 1:
            if f.frames <= samples:
                return np.resize(_read(f, where=where), samples)  # wrap-around repeat, as voxceleb_trainer pads
            start = int(rng.integers(0, f.frames - samples + 1))
            return np.resize(_read(f, start, samples, where), samples)
        up, down = ratio.denominator, ratio.numerator  # output rate / file rate = up / down
        span = math.ceil(samples * ratio)  # file samples under the segment
        if f.frames <= span:
            return np.resize(_resample(_read(f, where=where), up, down), samples)
        start = int(rng.integers(0, f.frames - span + 1))
        periods = min(math.ceil(RESAMPLE_PAD / down), start // down)  # context before the segment, whole periods
        first = start - periods * down
        last = min(f.frames, start + span + RESAMPLE_PAD)
        out = _resample(_read(f, first, last - first, where), up, down)
    return np.resize(out[periods * up:periods * up + samples], samples)


def load_crop(path: str, max_frames: int, rng: np.random.Generator, resample: bool = False,
              speed: Fraction = Fraction(1), where: str = "") -> np.ndarray:
    """A random crop of ``max_frames`` frames, (samples,) float32; short files are repeated to length (files
    shorter than MIN_SAMPLES are an error)."""
    return read_segment(path, crop_samples(max_frames), rng, resample, speed, where, MIN_SAMPLES)


def read_audio(path: str | Path, resample: bool = False, where: str = "", min_samples: int = 1) -> np.ndarray:
    """A whole file at 16 kHz, (samples,) float32 (resampled and downmixed when ``resample``); files shorter than
    ``min_samples`` (at 16 kHz) are an error."""
    with open_audio(path, resample, where, min_samples) as f:
        rate = Fraction(SAMPLE_RATE, f.samplerate)
        audio = _read(f, where=where)
    return _resample(audio, rate.numerator, rate.denominator)


def load_eval(path: str, eval_frames: int, num_eval: int, resample: bool = False, where: str = "") -> np.ndarray:
    """(num_eval, samples) evenly spaced crops of ``eval_frames`` frames, or (1, whole file) if eval_frames is 0;
    files shorter than MIN_SAMPLES are an error."""
    audio = read_audio(path, resample, where, MIN_SAMPLES)
    if eval_frames <= 0:
        return audio[None, :]
    need = crop_samples(eval_frames)
    if len(audio) < need:
        audio = np.resize(audio, need)
    starts = np.linspace(0, len(audio) - need, num=num_eval).astype(np.int64)
    return np.stack([audio[s:s + need] for s in starts])


def write_wav(path: str | Path, audio: np.ndarray) -> None:
    """Write (samples,) as a 16 kHz 16-bit wav, atomically; floats clipped to [-1, 1), int16 as is."""
    if audio.dtype.kind == "f":
        audio = np.clip(audio, -1.0, 32767 / 32768)
    with atomic_path(path) as tmp:
        soundfile.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
