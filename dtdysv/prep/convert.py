"""Audio preparation (``dataprep.py`` steps):

- convert: .m4a/.aac (ffmpeg), .wav, .flac -> 16 kHz mono 16-bit wav at the same relative path, in parallel.
- MUSAN: <type>/<source>/<file>.wav -> 5-s chunks every 3 s, <type>/<source>/<file>/<start second>.wav
  (voxceleb_trainer's split; a file under 5 s stays one chunk).
- RIRs: simulated_rirs/{smallroom,mediumroom} of RIRS_NOISES linked (or copied) and checked.

Outputs are written under temporary names and renamed, so reruns skip finished work; failures are reported at the end.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import soundfile
from tqdm import tqdm

from dtdysv.data.audio import SAMPLE_RATE, AudioError, open_audio, read_audio, write_wav
from dtdysv.data.lists import offenders_message
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_path, remove_temporaries

log = logging.getLogger(__name__)

AUDIO_INPUTS = (".wav", ".flac", ".m4a", ".aac")
FFMPEG_INPUTS = (".m4a", ".aac")
MUSAN_TYPES = ("music", "noise", "speech")
MUSAN_CHUNK_SECONDS, MUSAN_HOP_SECONDS = 5, 3
RIR_ROOMS = ("smallroom", "mediumroom")
_FAILURES = (RuntimeError, OSError, ValueError, soundfile.LibsndfileError, AudioError)  # one file's, reported


class AudioPrepError(UserError):
    pass


def _parallel(func: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str) -> list[Any]:
    """``func`` over ``jobs`` in ``workers`` processes (inline for 1), with a progress bar."""
    if workers <= 1 or len(jobs) <= 1:
        return [func(job) for job in tqdm(jobs, desc=desc, unit="file")]
    with Pool(min(workers, len(jobs))) as pool:
        return list(tqdm(pool.imap_unordered(func, jobs, chunksize=8), total=len(jobs), desc=desc, unit="file"))


def _check_failures(results: list[tuple[str, str]], what: str, hint: str) -> None:
    failed = sorted(f"{src}: {err}" for src, err in results if err)
    if failed:
        raise AudioPrepError(offenders_message(what.format(done=len(results) - len(failed)), failed, hint))


# --- conversion


def _convert_one(job: tuple[str, str, str | None]) -> tuple[str, str]:
    """(source, output, ffmpeg) -> (source, '' or the error)."""
    src, dest, ffmpeg = job
    try:
        if Path(src).suffix.lower() not in FFMPEG_INPUTS:
            write_wav(dest, read_audio(src, resample=True))
            return src, ""
        with atomic_path(dest) as tmp:
            run = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", src, "-vn", "-ac", "1",
                                  "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(tmp)],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"ffmpeg failed: {run.stderr.strip()[-300:]}")
            if soundfile.info(tmp).frames == 0:
                raise ValueError("decoded to no samples")
    except _FAILURES as err:
        return src, str(err)
    return src, ""


def convert_tree(source: Path, out_dir: Path, workers: int) -> dict[str, int]:
    """Every audio file under ``source`` -> 16 kHz mono 16-bit wav at the same path under ``out_dir``; existing outputs
    are skipped, failures reported at the end."""
    if not source.is_dir():
        raise AudioPrepError(f"--convert {source}: not a directory")
    src, out = source.resolve(), out_dir.resolve()
    if src == out or src in out.parents or out in src.parents:
        raise AudioPrepError(f"--convert {source} and --convert_to {out_dir} must not contain one another")
    inputs = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_INPUTS and p.is_file())
    if not inputs:
        raise AudioPrepError(f"--convert {source}: no {', '.join(AUDIO_INPUTS)} files found")
    todo = [(p, out_dir / p.relative_to(source).with_suffix(".wav")) for p in inputs]
    if len({dest for _, dest in todo}) != len(todo):
        raise AudioPrepError(f"--convert {source}: two inputs differ only in their extension and would share an "
                             f"output")
    todo = [(p, dest) for p, dest in todo if not dest.exists()]
    ffmpeg = shutil.which("ffmpeg")
    need_ffmpeg = sum(p.suffix.lower() in FFMPEG_INPUTS for p, _ in todo)
    if need_ffmpeg and ffmpeg is None:
        raise AudioPrepError(f"{need_ffmpeg} {'/'.join(FFMPEG_INPUTS)} files under {source} need ffmpeg to decode, "
                             f"and there is no `ffmpeg` on PATH: install it (e.g. `apt-get install ffmpeg` or "
                             f"`conda install ffmpeg`) and rerun; finished files are kept.")
    for folder in {dest.parent for _, dest in todo}:
        remove_temporaries(folder)  # of a killed run
    log.info("converting %d files (%d already done) with %d workers", len(todo), len(inputs) - len(todo), workers)
    results = _parallel(_convert_one, [(str(p), str(d), ffmpeg) for p, d in todo], workers, "convert")
    _check_failures(results, "files could not be converted (the other {done} were)",
                    "Fix or remove them and rerun; converted files are skipped.")
    return {"converted": len(todo), "skipped": len(inputs) - len(todo)}


# --- MUSAN and RIRs


def musan_chunk_starts(samples: int) -> list[int]:
    """Start samples of the 5-s chunks, one every 3 s, that fit in ``samples`` (one chunk if the file is shorter)."""
    length, hop = MUSAN_CHUNK_SECONDS * SAMPLE_RATE, MUSAN_HOP_SECONDS * SAMPLE_RATE
    return list(range(0, samples - length + 1, hop)) if samples >= length else [0]


def _split_one(job: tuple[str, str]) -> tuple[str, str]:
    src, dest = job
    try:
        audio = read_audio(src, resample=True)
        length = MUSAN_CHUNK_SECONDS * SAMPLE_RATE
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for start in musan_chunk_starts(len(audio)):
                write_wav(tmp / f"{start // SAMPLE_RATE:05d}.wav", audio[start:start + length])
    except _FAILURES as err:
        return src, str(err)
    return src, ""


def split_musan(source: Path, out_dir: Path, workers: int) -> dict[str, int]:
    """MUSAN -> ``out_dir/<type>/<source>/<file>/<start second>.wav`` chunks (a finished file's folder is kept)."""
    if not (source / "noise").is_dir() and (source / "musan").is_dir():
        source = source / "musan"  # the folder that holds the extracted musan/
    missing = [t for t in MUSAN_TYPES if not (source / t).is_dir()]
    if missing:
        raise AudioPrepError(f"--split_musan {source}: no {', '.join(missing)} folder(s); expected the extracted "
                             f"MUSAN with folders {', '.join(MUSAN_TYPES)}")
    inputs = sorted(p for t in MUSAN_TYPES for p in (source / t).rglob("*.wav"))
    todo = [(p, out_dir / p.relative_to(source).with_suffix("")) for p in inputs]
    todo = [(p, d) for p, d in todo if not d.is_dir()]
    for folder in {dest.parent for _, dest in todo}:
        remove_temporaries(folder)  # of a killed run: the augmenter would find their chunks
    log.info("splitting %d MUSAN files (%d already done)", len(todo), len(inputs) - len(todo))
    results = _parallel(_split_one, [(str(p), str(d)) for p, d in todo], workers, "split MUSAN")
    _check_failures(results, "MUSAN files could not be split", "Fix or remove them and rerun.")
    return {"split": len(todo), "skipped": len(inputs) - len(todo)}


def _audio_problem(path: Path) -> str:
    try:
        open_audio(path).close()
    except AudioError as err:
        return str(err)
    return ""


def prepare_rir(source: Path, out_dir: Path, copy: bool = False) -> dict[str, int]:
    """Make ``out_dir/{smallroom,mediumroom}`` from the RIRS_NOISES folder ``source`` and check every RIR."""
    candidates = [source, source / "simulated_rirs", source / "RIRS_NOISES" / "simulated_rirs"]
    found = next((c for c in candidates if all((c / room).is_dir() for room in RIR_ROOMS)), None)
    if found is None:
        raise AudioPrepError(f"--prepare_rir {source}: no simulated_rirs with {' and '.join(RIR_ROOMS)} found in "
                             f"{', '.join(str(c) for c in candidates)}; extract rirs_noises.zip first")
    counts, bad = {}, []
    for room in RIR_ROOMS:
        dest = out_dir / room
        if not dest.exists() and (found / room).resolve() != dest.resolve():
            out_dir.mkdir(parents=True, exist_ok=True)
            if copy:
                remove_temporaries(out_dir)  # of a killed run
                with atomic_path(dest) as tmp:
                    shutil.copytree(found / room, tmp)
            else:
                dest.symlink_to((found / room).resolve(), target_is_directory=True)
        files = sorted(dest.rglob("*.wav"))
        if not files:
            bad.append(f"{dest}: no .wav files")
        bad += [p for p in map(_audio_problem, files) if p]
        counts[room] = len(files)
    if bad:
        raise AudioPrepError(offenders_message(f"problems in the RIRs under {out_dir}", bad,
                                               "RIRs must be 16 kHz mono wav files."))
    log.info("RIRs ready in %s: %s", out_dir, ", ".join(f"{n} {room}" for room, n in counts.items()))
    return counts
