"""Data preparation: one function per step, selected by flags, run in the order listed below.

    python dataprep.py --download data/download --user USER --password PASS     # needs the owners' credentials
    python dataprep.py --extract data/download/vox2_dev_aac.zip --extract_to data/voxceleb2
    python dataprep.py --convert data/voxceleb2/dev/aac --convert_to data/voxceleb2/dev/wav
    python dataprep.py --split_musan data/musan --musan_split_to data/musan_split
    python dataprep.py --prepare_rir data/RIRS_NOISES --rir_to data/RIRS_NOISES/simulated_rirs
    python dataprep.py --make_list --source data/voxceleb2/dev/wav --out data/train_list.txt
    python dataprep.py --make_demo data/demo [--demo_seed 0]      # synthetic corpus for `make demo`, no download

Steps (each skips what an earlier run finished: outputs are written under a temporary name and renamed):
  --download DIR     fetch the archives of --datasets (URL table below, or --url_list) into DIR with resume, and
                     join split archives (vox1_dev_wav_parta* -> vox1_dev_wav.zip). VoxCeleb needs --user/--password.
  --extract A [A..]  unpack zip or tar archives into --extract_to; members with absolute paths, '..', links or
                     special files are refused.
  --convert DIR      every .m4a/.aac (with ffmpeg), .wav and .flac under DIR -> 16 kHz mono 16-bit wav under
                     --convert_to, same relative paths, in parallel (--workers).
  --split_musan DIR  MUSAN (DIR/<music|noise|speech>/...) -> 5-s chunks every 3 s (voxceleb_trainer's split) under
                     --musan_split_to: <type>/<source>/<file>/<start second>.wav. A file shorter than 5 s stays one
                     chunk (voxceleb_trainer drops it).
  --prepare_rir DIR  link (or with --rir_copy copy) simulated_rirs/{smallroom,mediumroom} of RIRS_NOISES in DIR to
                     --rir_to and check every RIR (16 kHz mono, not empty).
  --make_demo DIR    write the demo corpus (demodata.py) to DIR: train/ and test/ in VoxCeleb layout,
                     train_list.txt, test_list.txt; skipped when DIR already holds it with the same settings.
  --make_list        write a voxceleb_trainer train list (``<speaker> <speaker>/<video>/<file>.wav``, sorted)
                     for the tree --source/<speaker>/<video>/<file>.wav to --out.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

import numpy as np
import soundfile
from scipy.signal import resample_poly
from tqdm import tqdm

from config import UserError
from demodata import demo_corpus_complete, make_demo_corpus

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
AUDIO_INPUTS = (".wav", ".flac", ".m4a", ".aac")
FFMPEG_INPUTS = (".m4a", ".aac")
MUSAN_TYPES = ("music", "noise", "speech")
MUSAN_CHUNK_SECONDS, MUSAN_HOP_SECONDS = 5, 3
RIR_ROOMS = ("smallroom", "mediumroom")
MAX_REPORTED = 5
CHUNK = 1 << 20  # bytes per read when copying streams

# The archives. VoxCeleb URLs are those handed out with credentials, as in voxceleb_trainer's lists/fileparts.txt;
# if the owners move them, give the new ones with --url_list (lines '<dataset> <url>').
_VGG = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb"
DOWNLOADS: dict[str, list[str]] = {
    "voxceleb1": [f"{_VGG}/vox1a/vox1_dev_wav_parta{c}" for c in "abcd"] + [f"{_VGG}/vox1a/vox1_test_wav.zip"],
    "voxceleb2": [f"{_VGG}/vox1a/vox2_dev_aac_parta{c}" for c in "abcdefgh"] + [f"{_VGG}/vox1a/vox2_test_aac.zip"],
    "trials": [f"{_VGG}/meta/{name}" for name in ("veri_test2.txt", "list_test_hard2.txt", "list_test_all2.txt")],
    "musan": ["https://www.openslr.org/resources/17/musan.tar.gz"],
    "rirs": ["https://www.openslr.org/resources/28/rirs_noises.zip"],
}
NEEDS_CREDENTIALS = ("voxceleb1", "voxceleb2")


class DataPrepError(UserError):
    pass


def _report(what: str, offenders: list[str], hint: str) -> DataPrepError:
    shown = "\n  ".join(offenders[:MAX_REPORTED])
    more = f"\n  ... and {len(offenders) - MAX_REPORTED} more" if len(offenders) > MAX_REPORTED else ""
    return DataPrepError(f"{len(offenders)} {what}:\n  {shown}{more}\n{hint}")


def _parallel(func: Callable[[Any], Any], jobs: list[Any], workers: int, desc: str) -> list[Any]:
    """``func`` over ``jobs`` in ``workers`` processes (inline for 1), with a progress bar."""
    if workers <= 1 or len(jobs) <= 1:
        return [func(job) for job in tqdm(jobs, desc=desc, unit="file")]
    with Pool(min(workers, len(jobs))) as pool:
        return list(tqdm(pool.imap_unordered(func, jobs, chunksize=8), total=len(jobs), desc=desc, unit="file"))


def _read_16k_mono(path: Path) -> np.ndarray:
    """A whole wav/flac file as 16 kHz mono float32 (channels averaged, polyphase resampling)."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, rate)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)
    return audio


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz 16-bit wav, written under a temporary name and renamed (a complete file or none)."""
    tmp = path.with_name(path.name + ".part")
    soundfile.write(tmp, np.clip(audio, -1.0, 32767 / 32768), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


# --- download


def read_url_list(path: Path) -> dict[str, list[str]]:
    """'<dataset> <url>' lines -> {dataset: [urls]}, replacing the built-in table."""
    table: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2:
            raise DataPrepError(f"--url_list {path}, line {number}: expected '<dataset> <url>', got {line!r}")
        table.setdefault(parts[0], []).append(parts[1])
    return table


def _fetch(url: str, dest: Path, opener: urllib.request.OpenerDirector) -> None:
    """Download ``url`` to ``dest`` through ``dest``.part, continuing a partial download when the server can."""
    tmp = dest.with_name(dest.name + ".part")
    have = tmp.stat().st_size if tmp.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with opener.open(request) as response:
            resumed = have > 0 and getattr(response, "status", 200) == 206
            total = int(response.headers.get("Content-Length", 0)) + (have if resumed else 0)
            with open(tmp, "ab" if resumed else "wb") as f, tqdm(total=total or None, initial=have if resumed else 0,
                                                                unit="B", unit_scale=True, desc=dest.name) as bar:
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and have):  # 416: the partial file is already complete
            raise DataPrepError(f"Downloading {url} failed: {err}. Check --user/--password and the URL "
                                f"(--url_list).") from None
    except OSError as err:  # also urllib.error.URLError
        raise DataPrepError(f"Downloading {url} failed: {err}. Check --user/--password and the URL (--url_list); "
                            f"rerun to continue where it stopped.") from None
    os.replace(tmp, dest)


def join_parts(folder: Path) -> list[Path]:
    """Join split archives ``<stem>_partaa, _partab, ...`` into ``<stem>.zip`` (skipped when it exists)."""
    stems: dict[str, list[Path]] = {}
    for part in sorted(folder.glob("*_part??")):
        stems.setdefault(part.name[:-len("_partaa")], []).append(part)
    joined = []
    for stem, parts in stems.items():
        out = folder / f"{stem}.zip"
        if not out.exists():
            tmp = out.with_name(out.name + ".part")
            with open(tmp, "wb") as f:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, f, CHUNK)
            os.replace(tmp, out)
            log.info("joined %d parts into %s", len(parts), out)
        joined.append(out)
    return joined


def download(out_dir: Path, datasets: Sequence[str], user: str | None, password: str | None,
             table: dict[str, list[str]] | None = None) -> list[Path]:
    """Fetch every URL of ``datasets`` into ``out_dir`` (existing files are skipped), then join split archives."""
    table = DOWNLOADS if table is None else table
    unknown = [d for d in datasets if d not in table]
    if unknown:
        raise DataPrepError(f"--datasets {' '.join(unknown)}: unknown; choose from {', '.join(table)}")
    if any(d in NEEDS_CREDENTIALS for d in datasets) and not (user and password):
        raise DataPrepError("VoxCeleb downloads need the username and password the dataset owners send on request: "
                            "give --user and --password (or the environment variable VOXCELEB_PASSWORD).")
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    if user and password:
        for d in datasets:
            for url in table[d]:
                passwords.add_password(None, url, user, password)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in datasets:
        for url in table[d]:
            dest = out_dir / PurePosixPath(url.split("?")[0]).name
            if dest.exists():
                log.info("%s already downloaded: skipping", dest)
            else:
                _fetch(url, dest, opener)
    return join_parts(out_dir)


# --- extraction


def _unsafe(name: str) -> str:
    """Why an archive member name may not be extracted, or '' when it is safe."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in the path"
    return ""


def _copy_member(src: IO[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as f:
        shutil.copyfileobj(src, f, CHUNK)
    os.replace(tmp, dest)


def extract_archive(archive: Path, out_dir: Path) -> int:
    """Unpack a zip or tar (any compression) into ``out_dir``; returns the files written (existing files of the
    right size are skipped). Unsafe members are an error before they are written."""
    if not archive.is_file():
        raise DataPrepError(f"--extract {archive}: no such file")
    written = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            bad = [f"{m.filename!r}: {why}" for m in members if (why := _unsafe(m.filename))]
            bad += [f"{m.filename!r}: a symbolic link" for m in members if stat.S_ISLNK(m.external_attr >> 16)]
            if bad:
                raise _report(f"unsafe members in '{archive}' (nothing extracted)", bad,
                              "Archive members must be relative paths inside the archive.")
            for m in tqdm(members, desc=archive.name, unit="file"):
                dest = out_dir / m.filename
                if m.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                elif not (dest.is_file() and dest.stat().st_size == m.file_size):
                    with zf.open(m) as src:
                        _copy_member(src, dest)
                    written += 1
        return written
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as err:
        raise DataPrepError(f"--extract {archive}: neither a zip nor a tar archive ({err})") from None
    with tar, tqdm(desc=archive.name, unit="file") as bar:
        for m in tar:  # streamed: a member is checked before anything of it is written
            why = _unsafe(m.name) or ("" if m.isfile() or m.isdir() else "a link or special file")
            if why:
                raise DataPrepError(f"Unsafe member {m.name!r} in '{archive}': {why}; extraction stopped (members "
                                    f"before it were written). Archive members must be plain files and folders.")
            dest = out_dir / m.name
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif not (dest.is_file() and dest.stat().st_size == m.size):
                _copy_member(tar.extractfile(m), dest)
                written += 1
            bar.update()
    return written


# --- conversion


def _convert_one(job: tuple[str, str, str | None]) -> tuple[str, str]:
    """(source, output, ffmpeg) -> (source, '' or the error)."""
    src, dest, ffmpeg = job
    try:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        if Path(src).suffix.lower() in FFMPEG_INPUTS:
            tmp = dest + ".part"
            run = subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", src, "-vn", "-ac", "1",
                                  "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", tmp],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                return src, f"ffmpeg failed: {run.stderr.strip()[-300:]}"
            info = soundfile.info(tmp)
            if info.frames == 0:
                return src, "decoded to no samples"
            os.replace(tmp, dest)
        else:
            audio = _read_16k_mono(Path(src))
            if len(audio) == 0:
                return src, "no samples"
            _write_wav(Path(dest), audio)
    except (RuntimeError, OSError, ValueError, soundfile.LibsndfileError) as err:
        return src, str(err)
    return src, ""


def convert_tree(source: Path, out_dir: Path, workers: int) -> dict[str, int]:
    """Every audio file under ``source`` -> 16 kHz mono 16-bit wav at the same relative path under ``out_dir``.

    Outputs that exist are skipped (they are complete: written under a temporary name and renamed). Files that
    fail are reported together at the end, after everything else was converted.
    """
    if not source.is_dir():
        raise DataPrepError(f"--convert {source}: not a directory")
    src, out = source.resolve(), out_dir.resolve()
    if src == out or src in out.parents or out in src.parents:
        raise DataPrepError(f"--convert {source} and --convert_to {out_dir} must not contain one another")
    inputs = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_INPUTS and p.is_file())
    if not inputs:
        raise DataPrepError(f"--convert {source}: no {', '.join(AUDIO_INPUTS)} files found")
    todo = [(p, out_dir / p.relative_to(source).with_suffix(".wav")) for p in inputs]
    if len({dest for _, dest in todo}) != len(todo):
        raise DataPrepError(f"--convert {source}: two inputs differ only in their extension and would share an output")
    todo = [(p, dest) for p, dest in todo if not dest.exists()]
    ffmpeg = shutil.which("ffmpeg")
    need_ffmpeg = sum(p.suffix.lower() in FFMPEG_INPUTS for p, _ in todo)
    if need_ffmpeg and ffmpeg is None:
        raise DataPrepError(f"{need_ffmpeg} {'/'.join(FFMPEG_INPUTS)} files under {source} need ffmpeg to decode, and "
                            f"there is no `ffmpeg` on PATH: install it (e.g. `apt-get install ffmpeg` or "
                            f"`conda install ffmpeg`) and rerun; finished files are kept.")
    log.info("converting %d files (%d already done) with %d workers", len(todo), len(inputs) - len(todo), workers)
    results = _parallel(_convert_one, [(str(p), str(d), ffmpeg) for p, d in todo], workers, "convert")
    failed = sorted(f"{s}: {err}" for s, err in results if err)
    if failed:
        raise _report(f"files could not be converted (the other {len(todo) - len(failed)} were)", failed,
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
        audio = _read_16k_mono(Path(src))
        if len(audio) == 0:
            return src, "no samples"
        tmp = Path(dest + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        length = MUSAN_CHUNK_SECONDS * SAMPLE_RATE
        for start in musan_chunk_starts(len(audio)):
            _write_wav(tmp / f"{start // SAMPLE_RATE:05d}.wav", audio[start:start + length])
        os.replace(tmp, dest)
    except (RuntimeError, OSError, ValueError, soundfile.LibsndfileError) as err:
        return src, str(err)
    return src, ""


def split_musan(source: Path, out_dir: Path, workers: int) -> dict[str, int]:
    """MUSAN -> ``out_dir/<type>/<source>/<file>/<start second>.wav`` chunks (a finished file's folder is kept)."""
    if not (source / "noise").is_dir() and (source / "musan").is_dir():
        source = source / "musan"  # the folder that holds the extracted musan/
    missing = [t for t in MUSAN_TYPES if not (source / t).is_dir()]
    if missing:
        raise DataPrepError(f"--split_musan {source}: no {', '.join(missing)} folder(s); expected the extracted MUSAN "
                            f"with folders {', '.join(MUSAN_TYPES)}")
    inputs = sorted(p for t in MUSAN_TYPES for p in (source / t).rglob("*.wav"))
    todo = [(p, out_dir / p.relative_to(source).with_suffix("")) for p in inputs]
    todo = [(p, d) for p, d in todo if not d.is_dir()]
    log.info("splitting %d MUSAN files (%d already done)", len(todo), len(inputs) - len(todo))
    results = _parallel(_split_one, [(str(p), str(d)) for p, d in todo], workers, "split MUSAN")
    failed = sorted(f"{s}: {err}" for s, err in results if err)
    if failed:
        raise _report("MUSAN files could not be split", failed, "Fix or remove them and rerun.")
    return {"split": len(todo), "skipped": len(inputs) - len(todo)}


def _audio_problem(path: Path) -> str:
    try:
        info = soundfile.info(path)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        return f"{path}: cannot be decoded ({err})"
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
        return f"{path}: {info.samplerate} Hz, {info.channels} channel(s), {info.frames} samples"
    return ""


def prepare_rir(source: Path, out_dir: Path, copy: bool = False) -> dict[str, int]:
    """Make ``out_dir/{smallroom,mediumroom}`` from the RIRS_NOISES folder ``source`` and check every RIR."""
    candidates = [source, source / "simulated_rirs", source / "RIRS_NOISES" / "simulated_rirs"]
    found = next((c for c in candidates if all((c / room).is_dir() for room in RIR_ROOMS)), None)
    if found is None:
        raise DataPrepError(f"--prepare_rir {source}: no simulated_rirs with {' and '.join(RIR_ROOMS)} found in "
                            f"{', '.join(str(c) for c in candidates)}; extract rirs_noises.zip first")
    counts, bad = {}, []
    for room in RIR_ROOMS:
        dest = out_dir / room
        if not dest.exists() and (found / room).resolve() != dest.resolve():
            out_dir.mkdir(parents=True, exist_ok=True)
            if copy:
                tmp = dest.with_name(room + ".part")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(found / room, tmp)
                os.replace(tmp, dest)
            else:
                dest.symlink_to((found / room).resolve(), target_is_directory=True)
        files = sorted(dest.rglob("*.wav"))
        if not files:
            bad.append(f"{dest}: no .wav files")
        bad += [p for p in map(_audio_problem, files) if p]
        counts[room] = len(files)
    if bad:
        raise _report(f"problems in the RIRs under {out_dir}", bad, "RIRs must be 16 kHz mono wav files.")
    log.info("RIRs ready in %s: %s", out_dir, ", ".join(f"{n} {room}" for room, n in counts.items()))
    return counts


# --- lists and the demo corpus


# --demo_<flag> -> make_demo_corpus parameter; the defaults are read from its signature (defined once, there).
_DEMO_FLAGS = {"seed": "seed", "train_speakers": "n_train_speakers", "test_speakers": "n_test_speakers",
               "utts": "utts_per_speaker", "test_utts": "test_utts_per_speaker", "videos": "videos_per_speaker",
               "trials": "n_trials", "min_seconds": "min_seconds", "max_seconds": "max_seconds"}
_DEMO_HELP = {"seed": "random seed; the same seed gives byte-identical files",
              "train_speakers": "training speakers", "test_speakers": "held-out test speakers",
              "utts": "utterances per training speaker", "test_utts": "utterances per test speaker",
              "videos": "sessions ('videos', each with its own channel) per speaker",
              "trials": "trials in test_list.txt (half target, half non-target)",
              "min_seconds": "shortest utterance (s)", "max_seconds": "longest utterance (s)"}
_DEMO_DEFAULTS = {name: p.default for name, p in inspect.signature(make_demo_corpus).parameters.items()}


def make_demo(out_dir: Path, settings: dict[str, int | float]) -> dict:
    """Build the demo corpus in ``out_dir`` unless it is already there with these ``settings``."""
    if demo_corpus_complete(out_dir, settings):
        log.info("demo corpus already complete in %s with the same settings: skipping", out_dir)
        return {"skipped": True, "out_dir": str(out_dir)}
    return make_demo_corpus(out_dir, **settings)


def write_train_list(source: Path, out: Path) -> int:
    """Write ``<speaker> <speaker>/<video>/<file>.wav`` for every wav under ``source``, sorted; returns the count."""
    if not source.is_dir():
        raise DataPrepError(f"--source {source}: not a directory")
    lines = []
    for path in sorted(source.rglob("*.wav")):
        rel = path.relative_to(source)
        if len(rel.parts) != 3:
            raise DataPrepError(f"--source {source}: {rel} is not <speaker>/<video>/<file>.wav (VoxCeleb layout)")
        if any(c.isspace() for c in rel.as_posix()):
            raise DataPrepError(f"--source {source}: {rel} has whitespace in its path, which a list cannot hold")
        lines.append(f"{rel.parts[0]} {rel.as_posix()}\n")
    if not lines:
        raise DataPrepError(f"--source {source}: no .wav files found (expected <speaker>/<video>/<file>.wav)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, out)
    log.info("wrote %s: %d files of %d speakers", out, len(lines), len({line.split()[0] for line in lines}))
    return len(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for --convert and --split_musan (default: the CPU count)")
    fetch = parser.add_argument_group("download and extract")
    fetch.add_argument("--download", type=Path, metavar="DIR", help="download the archives of --datasets to DIR")
    fetch.add_argument("--datasets", nargs="+", default=list(DOWNLOADS), metavar="NAME",
                       help=f"--download: which ({', '.join(DOWNLOADS)}; default: all)")
    fetch.add_argument("--user", help="--download: VoxCeleb username")
    fetch.add_argument("--password", default=os.environ.get("VOXCELEB_PASSWORD"),
                       help="--download: VoxCeleb password (default: $VOXCELEB_PASSWORD)")
    fetch.add_argument("--url_list", type=Path, metavar="FILE", help="--download: '<dataset> <url>' lines to use "
                       "instead of the built-in URL table")
    fetch.add_argument("--extract", type=Path, nargs="+", metavar="ARCHIVE", help="zip or tar archives to unpack")
    fetch.add_argument("--extract_to", type=Path, metavar="DIR", help="--extract: the folder to unpack into")
    audio = parser.add_argument_group("audio")
    audio.add_argument("--convert", type=Path, metavar="DIR", help="convert the audio tree DIR to 16 kHz mono wav")
    audio.add_argument("--convert_to", type=Path, metavar="DIR", help="--convert: the output tree")
    audio.add_argument("--split_musan", type=Path, metavar="DIR", help="split the extracted MUSAN in DIR")
    audio.add_argument("--musan_split_to", type=Path, metavar="DIR", help="--split_musan: output (--musan_path)")
    audio.add_argument("--prepare_rir", type=Path, metavar="DIR", help="the extracted RIRS_NOISES folder")
    audio.add_argument("--rir_to", type=Path, metavar="DIR", help="--prepare_rir: output (--rir_path)")
    audio.add_argument("--rir_copy", action="store_true", help="--prepare_rir: copy instead of linking")
    demo = parser.add_argument_group("demo corpus")
    demo.add_argument("--make_demo", type=Path, metavar="DIR", help="write the synthetic demo corpus to DIR")
    for flag, name in _DEMO_FLAGS.items():
        default = _DEMO_DEFAULTS[name]
        demo.add_argument(f"--demo_{flag}", type=type(default), default=default,
                          help=f"{_DEMO_HELP[flag]} (default: {default})")
    lists = parser.add_argument_group("lists")
    lists.add_argument("--make_list", action="store_true", help="write a train list for the tree --source")
    lists.add_argument("--source", type=Path, metavar="DIR", help="--make_list: DIR/<speaker>/<video>/<file>.wav")
    lists.add_argument("--out", type=Path, metavar="LIST", help="--make_list: the list file to write")
    return parser


def _need(parser: argparse.ArgumentParser, pairs: Iterable[tuple[Any, Any, str]]) -> None:
    for step, value, message in pairs:
        if step and value is None:
            parser.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    steps = (args.download, args.extract, args.convert, args.split_musan, args.prepare_rir, args.make_demo)
    if all(s is None for s in steps) and not args.make_list:
        parser.error("nothing to do: choose a step (--download, --extract, --convert, --split_musan, --prepare_rir, "
                     "--make_demo DIR, --make_list)")
    _need(parser, [(args.extract, args.extract_to, "--extract needs --extract_to DIR"),
                   (args.convert, args.convert_to, "--convert needs --convert_to DIR"),
                   (args.split_musan, args.musan_split_to, "--split_musan needs --musan_split_to DIR"),
                   (args.prepare_rir, args.rir_to, "--prepare_rir needs --rir_to DIR")])
    if args.make_list and (args.source is None or args.out is None):
        parser.error("--make_list needs --source DIR and --out LIST")
    try:
        if args.download is not None:
            table = read_url_list(args.url_list) if args.url_list else None
            download(args.download, args.datasets, args.user, args.password, table)
        for archive in args.extract or ():
            log.info("%s: %d files extracted", archive, extract_archive(archive, args.extract_to))
        if args.convert is not None:
            convert_tree(args.convert, args.convert_to, args.workers)
        if args.split_musan is not None:
            split_musan(args.split_musan, args.musan_split_to, args.workers)
        if args.prepare_rir is not None:
            prepare_rir(args.prepare_rir, args.rir_to, args.rir_copy)
        if args.make_demo is not None:
            make_demo(args.make_demo, {name: getattr(args, f"demo_{flag}") for flag, name in _DEMO_FLAGS.items()})
        if args.make_list:
            write_train_list(args.source, args.out)
    except UserError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
