"""Synthetic multi-speaker corpus for the demo recipe (``make demo``), voices from speechsynth.py, in VoxCeleb /
voxceleb_trainer layout:

    out_dir/train/wav/id00001/<video>/00001.wav    out_dir/train_list.txt   "<speaker> <path under train/wav>"
    out_dir/test/wav/id10001/<video>/00001.wav     out_dir/test_list.txt    "<label 0|1> <enroll> <test>"
    out_dir/test/wav/id20001/<video>/00001.wav     out_dir/calibration_list.txt (``calibration_speakers`` > 0)
    out_dir/demo_info.json                         settings and counts, written last (marks a complete corpus)

Test speakers are held out; calibration speakers (for ``--calibration_list``) are held out from both the training
and the test speakers, so that a calibration trained on their trials is judged on unseen voices. Generators are
seeded by (seed, split, speaker, ...): the same settings give byte-identical files.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from dtdysv.data.audio import SAMPLE_RATE, write_wav
from dtdysv.errors import UserError
from dtdysv.prep.speechsynth import draw_channel, draw_voice, record, synthesize
from dtdysv.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when the synthesis or the layout changes, so old corpora are rebuilt
INFO_FILE = "demo_info.json"
_TRAIN, _TEST, _TRIALS, _CALIBRATION = 0, 1, 2, 3  # split codes in the seeds
_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


class DemoCorpusError(UserError):
    pass


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
        voice = draw_voice(np.random.default_rng([seed, split, s, 0]))
        video_ids = _video_ids(np.random.default_rng([seed, split, s, 1]), videos)
        channels = [draw_channel(np.random.default_rng([seed, split, s, 2, v])) for v in range(videos)]
        for u in range(utts):
            v = u * videos // utts  # consecutive utterances share a session, numbered per video as in VoxCeleb
            first_in_video = -(-v * utts // videos)  # smallest u of video v
            rng = np.random.default_rng([seed, split, s, 3, u])
            audio = record(synthesize(voice, rng, rng.uniform(min_seconds, max_seconds)), channels[v], rng)
            rel = f"{speaker}/{video_ids[v]}/{u - first_in_video + 1:05d}.wav"
            write_wav(wav_dir / rel, audio)
            files.append((s, rel))
            total += audio.size / SAMPLE_RATE
    return files, total


def _trials(files: list[tuple[int, str]], n_trials: int, seed: int,
            split: int = _TEST) -> list[tuple[int, str, str]]:
    """Balanced target / non-target pairs of distinct files, sorted by (enroll, test)."""
    rng = np.random.default_rng([seed, _TRIALS] if split == _TEST else [seed, _TRIALS, split])
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


def read_demo_info(out_dir: Path) -> dict[str, Any] | None:
    """The corpus' ``demo_info.json``, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((Path(out_dir) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def demo_corpus_complete(out_dir: Path, settings: dict[str, Any]) -> bool:
    """Whether ``out_dir`` holds a complete corpus of this generator version made with ``settings`` (keyword arguments
    of :func:`make_demo_corpus`)."""
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
        lists = ["test_list.txt"] + (["calibration_list.txt"] if wanted["calibration_speakers"] else [])
        test = {p for name in lists for line in (out_dir / name).read_text().splitlines() for p in line.split()[1:]}
    except (OSError, IndexError):
        return False
    return (len(train) == info.get("n_train_utterances") and len(test) > 0
            and all((out_dir / "train" / "wav" / p).is_file() for p in train)
            and all((out_dir / "test" / "wav" / p).is_file() for p in test))


def make_demo_corpus(out_dir: Path, n_train_speakers: int = 40, n_test_speakers: int = 10,
                     utts_per_speaker: int = 16, test_utts_per_speaker: int = 8, videos_per_speaker: int = 4,
                     n_trials: int = 400, min_seconds: float = 2.0, max_seconds: float = 4.0,
                     seed: int = 0, calibration_speakers: int = 0) -> dict[str, Any]:
    """Write the demo corpus to ``out_dir`` and return a summary; replaces an earlier demo corpus, refuses a
    ``train/wav`` or ``test/wav`` that is not one. ``calibration_speakers`` > 0 adds ``calibration_list.txt``:
    ``n_trials`` trials of that many more held-out speakers (``test_utts_per_speaker`` utterances each)."""
    settings = {k: v for k, v in locals().items() if k != "out_dir"}
    checks = [("n_train_speakers", n_train_speakers, 2, 9999), ("n_test_speakers", n_test_speakers, 2, 9999),
              ("utts_per_speaker", utts_per_speaker, 1, 99999),
              ("test_utts_per_speaker", test_utts_per_speaker, 2, 99999),
              ("videos_per_speaker", videos_per_speaker, 1, min(utts_per_speaker, test_utts_per_speaker)),
              ("n_trials", n_trials, 2, 10**7), ("calibration_speakers", calibration_speakers, 0, 9999)]
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
    atomic_write_text(out_dir / INFO_FILE, json.dumps(info, indent=1, sort_keys=True) + "\n")
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
    atomic_write_text(out_dir / "train_list.txt", "".join(sorted(f"{train_speakers[s]} {rel}\n" for s, rel in train)))
    atomic_write_text(out_dir / "test_list.txt", "".join(f"{label} {e} {t}\n" for label, e, t in trials))
    (out_dir / "calibration_list.txt").unlink(missing_ok=True)
    if calibration_speakers:
        speakers = [f"id{20001 + i:05d}" for i in range(calibration_speakers)]
        files, seconds = _write_speakers(test_wav, speakers, _CALIBRATION, test_utts_per_speaker, videos_per_speaker,
                                         min_seconds, max_seconds, seed)
        test_s += seconds
        calibration = _trials(files, n_trials, seed, _CALIBRATION)
        atomic_write_text(out_dir / "calibration_list.txt", "".join(f"{label} {e} {t}\n"
                                                                    for label, e, t in calibration))
    info.update(complete=True, n_train_speakers=n_train_speakers, n_train_utterances=len(train),
                n_test_speakers=n_test_speakers, n_test_utterances=len(test), n_trials=len(trials),
                n_target_trials=sum(t[0] for t in trials), calibration_speakers=calibration_speakers,
                train_hours=round(train_s / 3600, 4),
                test_hours=round(test_s / 3600, 4))
    atomic_write_text(out_dir / INFO_FILE, json.dumps(info, indent=1, sort_keys=True) + "\n")
    summary = {k: v for k, v in info.items() if k not in ("complete", "generator_version")}
    summary.update(out_dir=str(out_dir), train_path=str(train_wav), test_path=str(test_wav),
                   train_list=str(out_dir / "train_list.txt"), test_list=str(out_dir / "test_list.txt"),
                   elapsed_s=round(time.perf_counter() - start, 2))
    log.info("demo corpus in %s: %d train speakers / %d utterances (%.2f h), %d test speakers / %d utterances, "
             "%d trials (%d target), %.1f s", out_dir, n_train_speakers, len(train), train_s / 3600,
             n_test_speakers, len(test), len(trials), summary["n_target_trials"], summary["elapsed_s"])
    return summary
