#!/usr/bin/env python
"""Training-crop loading speed: crops per second of one worker process, ours against voxceleb_trainer's way.

    python bench/data_speed.py [--seconds 60] [--files 8] [--max_frames 200] [--min_time 2] [--batch 128]

Writes --files wavs of --seconds each (16 kHz, 16-bit, as VoxCeleb) and a miniature MUSAN split (5-s chunks) and
RIR folder into a temporary folder, then times, in one run:

- whole-file read + crop: voxceleb_trainer's ``loadWAV`` (``soundfile.read`` of the whole file as float64, then a
  random crop), and its ``AugmentWAV`` (whole-file noise reads, ``scipy.signal.convolve``);
- ours: ``audio.load_crop`` (a partial read of only the crop's samples), with ``augment.Augmenter`` (partial
  noise reads, FFT convolution) and with speed perturbation;
- the augmentation maths alone on loaded sources, per crop in NumPy (what a worker runs).

The files are in the page cache, so reading costs decoding and copying, not disk time (on a disk the gap grows).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from augment import KINDS, SNR_DB, SOURCES, Augmenter  # noqa: E402
from DatasetLoader import SPEEDS  # noqa: E402
from dtdysv.data.audio import SAMPLE_RATE, crop_samples, load_crop  # noqa: E402


def make_data(root: Path, n_files: int, seconds: float, rir_seconds: float) -> list[str]:
    """Long 'utterances', a MUSAN split (10 chunks of 5 s per type) and RIRs (8 per room); returns the utterances."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_files):
        files.append(str(root / "wav" / f"{i:03d}.wav"))
        Path(files[-1]).parent.mkdir(parents=True, exist_ok=True)
        audio = rng.normal(0, 0.1, int(seconds * SAMPLE_RATE)).clip(-1, 1)
        soundfile.write(files[-1], audio, SAMPLE_RATE, subtype="PCM_16")
    for kind in ("noise", "speech", "music"):
        for i in range(10):
            path = root / "musan_split" / kind / "src" / f"{kind}-{i:04d}" / "00000.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, rng.normal(0, 0.05, 5 * SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    decay = np.exp(-np.arange(int(rir_seconds * SAMPLE_RATE)) / (0.05 * SAMPLE_RATE))
    for room in ("smallroom", "mediumroom"):
        for i in range(8):
            path = root / "simulated_rirs" / room / "Room001" / f"Room001-{i:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, (rng.normal(0, 0.3, len(decay)) * decay).clip(-1, 1), SAMPLE_RATE, subtype="PCM_16")
    return files


def vt_load_wav(path: str, max_frames: int) -> np.ndarray:
    """voxceleb_trainer's loadWAV(evalmode=False): whole-file read, wrap-pad, random crop -> (1, samples) float64."""
    max_audio = crop_samples(max_frames)
    audio, _ = soundfile.read(path)
    if audio.shape[0] <= max_audio:
        audio = np.pad(audio, (0, max_audio - audio.shape[0] + 1), "wrap")
    start = int(random.random() * (audio.shape[0] - max_audio))
    return np.stack([audio[start:start + max_audio]], axis=0).astype(np.float64)


class VtAugment:
    """voxceleb_trainer's AugmentWAV with its training-loader choice of one of five (none included)."""

    def __init__(self, musan: Path, rirs: Path, max_frames: int) -> None:
        self.noise = {kind: sorted(str(p) for p in (musan / kind).rglob("*.wav")) for kind in SNR_DB}
        self.rirs = sorted(str(p) for p in rirs.rglob("*.wav"))
        self.max_frames = max_frames

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        kind = random.choice(KINDS)
        if kind == "none":
            return audio
        if kind == "reverb":
            rir, _ = soundfile.read(random.choice(self.rirs))
            rir = rir[None, :] / np.sqrt(np.sum(rir ** 2))
            return signal.convolve(audio, rir, mode="full")[:, :audio.shape[1]]
        clean_db = 10 * np.log10(np.mean(audio ** 2) + 1e-4)
        noises = []
        for path in random.sample(self.noise[kind], random.randint(*SOURCES[kind])):
            noise = vt_load_wav(path, self.max_frames)
            noise_db = 10 * np.log10(np.mean(noise[0] ** 2) + 1e-4)
            noises.append(np.sqrt(10 ** ((clean_db - noise_db - random.uniform(*SNR_DB[kind])) / 10)) * noise)
        return np.sum(np.concatenate(noises, axis=0), axis=0, keepdims=True) + audio


def rate(step: Callable[[], object], min_time: float, min_count: int = 20) -> float:
    """Calls of ``step`` per second, timed over at least ``min_time`` seconds and ``min_count`` calls."""
    step()  # warm-up (first-call costs, file cache)
    count, start = 0, time.perf_counter()
    while count < min_count or time.perf_counter() - start < min_time:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each generated utterance (s)")
    parser.add_argument("--files", type=int, default=8, help="generated utterances")
    parser.add_argument("--max_frames", type=int, default=200, help="crop length in frames (200: 2 s)")
    parser.add_argument("--rir_seconds", type=float, default=0.5, help="length of the generated RIRs (s)")
    parser.add_argument("--min_time", type=float, default=2.0, help="seconds each measurement runs at least")
    parser.add_argument("--batch", type=int, default=128, help="crops timed together for the augmentation maths")
    args = parser.parse_args(argv)
    random.seed(0)
    rng = np.random.default_rng(0)
    need = crop_samples(args.max_frames)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_data(root, args.files, args.seconds, args.rir_seconds)
        vt_aug = VtAugment(root / "musan_split", root / "simulated_rirs", args.max_frames)
        aug = Augmenter(root / "musan_split", root / "simulated_rirs")

        def pick() -> str:
            return files[int(rng.integers(len(files)))]

        rows.append(("whole-file read + crop (voxceleb_trainer)", rate(lambda: vt_load_wav(pick(), args.max_frames),
                                                                     args.min_time)))
        rows.append(("partial read (ours)", rate(lambda: load_crop(pick(), args.max_frames, rng), args.min_time)))
        rows.append(("whole-file read + AugmentWAV (voxceleb_trainer)",
                     rate(lambda: vt_aug(vt_load_wav(pick(), args.max_frames)), args.min_time)))
        rows.append(("partial read + Augmenter (ours)",
                     rate(lambda: aug(load_crop(pick(), args.max_frames, rng), rng), args.min_time)))
        rows.append(("partial read + speed perturb + Augmenter (ours)",
                     rate(lambda: aug(load_crop(pick(), args.max_frames, rng, speed=SPEEDS[int(rng.integers(3))]),
                                      rng), args.min_time)))

        # The augmentation maths alone, on one batch of crops with their sources loaded.
        batch = [load_crop(pick(), args.max_frames, rng) for _ in range(args.batch)]
        plans = [aug.draw(rng) for _ in range(args.batch)]
        sources = [aug.load(plan, need, rng) for plan in plans]
        per_crop = rate(lambda: [aug.apply(row, p, s) for row, p, s in zip(batch, plans, sources, strict=True)],
                        args.min_time, 3) * args.batch

    base = rows[0][1]
    print(f"{args.files} files of {args.seconds:g} s, crops of {args.max_frames} frames ({need} samples), "
          f"RIRs of {args.rir_seconds:g} s, one process")
    print(f"{'reading (one worker)':<52}{'crops/s':>10}{'ms/crop':>10}{'vs whole-file':>15}")
    for name, value in rows:
        print(f"{name:<52}{value:>10.0f}{1000 / value:>10.3f}{value / base:>14.1f}x")
    print(f"{'augmentation maths only, NumPy per crop':<52}{per_crop:>10.0f}{1000 / per_crop:>10.3f}")

if __name__ == "__main__":
    main()
