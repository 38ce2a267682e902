"""dataprep.py and its steps: conversion, lists, safe extraction, MUSAN split and RIR preparation (audioprep.py,
archives.py, datalists.py) on generated mini trees."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep
from augment import Augmenter
from dtdysv.prep import archives
from dtdysv.prep import convert as audioprep
from dtdysv.prep.archives import ArchiveError
from dtdysv.prep.convert import AudioPrepError


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(src: Path) -> None:
    """Three speakers' files in the formats VoxCeleb users meet: 44.1 kHz stereo flac, 8 kHz wav, 16 kHz float."""
    (src / "id001/vidA").mkdir(parents=True)
    (src / "id002/vidB").mkdir(parents=True)
    (src / "id003/vidC").mkdir(parents=True)
    stereo = np.stack([sine(440, 0.5, 44100), sine(440, 0.5, 44100)], axis=1)
    soundfile.write(src / "id001/vidA/00001.flac", stereo, 44100)
    soundfile.write(src / "id002/vidB/00001.wav", sine(300, 0.75, 8000), 8000, subtype="PCM_16")
    soundfile.write(src / "id003/vidC/00001.wav", sine(200, 1.0, 16000), 16000, subtype="FLOAT")
    (src / "id003/notes.txt").write_text("not audio")


def test_convert_lists_and_rerun_does_nothing(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "wav"
    make_tree(src)
    assert audioprep.convert_tree(src, out, workers=2) == {"converted": 3, "skipped": 0}
    lengths = {}
    for rel in ("id001/vidA/00001.wav", "id002/vidB/00001.wav", "id003/vidC/00001.wav"):
        info = soundfile.info(out / rel)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        lengths[rel] = info.frames
    assert lengths == {"id001/vidA/00001.wav": 8000, "id002/vidB/00001.wav": 12000, "id003/vidC/00001.wav": 16000}
    audio, _ = soundfile.read(out / "id002/vidB/00001.wav")
    middle = slice(1000, 11000)  # away from the resampling filter's edges
    np.testing.assert_allclose(audio[middle], sine(300, 0.75, 16000)[middle], atol=2e-3)
    assert not list(out.rglob("*.part"))
    listed = tmp_path / "train_list.txt"
    assert dataprep.main(["--make_list", "--source", str(out), "--out", str(listed)]) == 0
    assert listed.read_text() == ("id001 id001/vidA/00001.wav\nid002 id002/vidB/00001.wav\n"
                                  "id003 id003/vidC/00001.wav\n")
    before = mtimes(out)
    assert dataprep.main(["--convert", str(src), "--convert_to", str(out), "--workers", "2"]) == 0
    assert audioprep.convert_tree(src, out, workers=1) == {"converted": 0, "skipped": 3}
    assert mtimes(out) == before  # nothing rewritten


def test_convert_reports_bad_files_together_and_keeps_the_rest(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "wav"
    make_tree(src)
    (src / "id002/vidB/00002.wav").write_bytes(b"RIFF broken")
    (src / "id002/vidB/00003.flac").write_bytes(b"")
    with pytest.raises(AudioPrepError, match=r"2 files could not be converted \(the other 3 were\):\n  .*00002.wav: "
                                            r"(.|\n)*00003.flac: (.|\n)*rerun"):
        audioprep.convert_tree(src, out, workers=1)
    assert len(list(out.rglob("*.wav"))) == 3
    assert not list(out.rglob(".*"))  # the failed files left no temporaries
    with pytest.raises(AudioPrepError, match="must not contain one another"):
        audioprep.convert_tree(src, src / "wav", workers=1)


def test_m4a_needs_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "aac"
    (src / "id001/vid").mkdir(parents=True)
    for name in ("00001.m4a", "00002.m4a"):
        (src / "id001/vid" / name).write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    monkeypatch.setattr(audioprep.shutil, "which", lambda name: None)
    with pytest.raises(AudioPrepError, match=r"^2 \.m4a/\.aac files under .*aac need ffmpeg to decode, and there is "
                                            r"no `ffmpeg` on PATH: install it"):
        audioprep.convert_tree(src, tmp_path / "wav", workers=1)
    assert not (tmp_path / "wav").exists()


def test_m4a_goes_through_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ffmpeg records its arguments and writes a wav to its last argument."""
    src = tmp_path / "aac"
    (src / "id001/vid").mkdir(parents=True)
    (src / "id001/vid/00001.m4a").write_bytes(b"fake")
    canned = tmp_path / "canned.wav"
    soundfile.write(canned, sine(100, 0.25, 16000), 16000, subtype="PCM_16")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ffmpeg"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args.txt"}\nfor last; do :; done\ncp {canned} "$last"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert audioprep.convert_tree(src, tmp_path / "wav", workers=1) == {"converted": 1, "skipped": 0}
    args = (tmp_path / "args.txt").read_text().split()
    assert args[args.index("-i") + 1] == str(src / "id001/vid/00001.m4a")
    assert args[args.index("-ar") + 1] == "16000" and args[args.index("-ac") + 1] == "1"
    assert soundfile.info(tmp_path / "wav/id001/vid/00001.wav").frames == 4000


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def write_tar(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tf.addfile(info)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extract_and_rerun(tmp_path: Path, kind: str) -> None:
    members = {"vox/id1/a.wav": b"a" * 10, "vox/id2/b.wav": b"bb", "vox/readme.txt": b"hello"}
    archive = tmp_path / f"data.{'zip' if kind == 'zip' else 'tar.gz'}"
    (write_zip if kind == "zip" else write_tar)(archive, members)
    out = tmp_path / "out"
    assert dataprep.main(["--extract", str(archive), "--extract_to", str(out)]) == 0
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == members
    assert archives.extract_archive(archive, out) == 0  # rerun: everything is there already
    (out / "vox/id2/b.wav").write_bytes(b"b")  # a truncated file is redone
    assert archives.extract_archive(archive, out) == 1 and (out / "vox/id2/b.wav").read_bytes() == b"bb"


@pytest.mark.parametrize("kind, bad, reason", [
    ("zip", "../evil.txt", "'..' in the path"),
    ("zip", "/etc/evil.txt", "absolute path"),
    ("zip", "ok/../../evil.txt", "'..' in the path"),
    ("tar", "../evil.txt", "'..' in the path"),
    ("tar", "/tmp/evil.txt", "absolute path"),
    ("tar", "link", "a link or special file"),
])
def test_extract_rejects_traversal(tmp_path: Path, kind: str, bad: str, reason: str) -> None:
    archive = tmp_path / "evil.archive"
    if kind == "zip":
        write_zip(archive, {"good.txt": b"x", bad: b"pwned"})
        expected = rf"1 unsafe members in '{archive}' \(nothing extracted\):\n  '{bad}': {reason}"
    elif bad == "link":
        write_tar(archive, {"good.txt": b"x"}, link=("link", "/etc/passwd"))
        expected = f"Unsafe member 'link' in '{archive}': {reason}"
    else:
        write_tar(archive, {"good.txt": b"x", bad: b"pwned"})
        expected = f"Unsafe member '{bad}' in '{archive}': {reason}"
    out = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveError, match=expected):
        archives.extract_archive(archive, out)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (out / "link").exists()


@pytest.mark.parametrize("seconds, starts", [(13.0, [0, 3, 6]), (11.0, [0, 3, 6]), (10.9, [0, 3]), (5.0, [0]),
                                             (4.0, [0])])
def test_musan_chunk_starts(seconds: float, starts: list[int]) -> None:
    assert audioprep.musan_chunk_starts(int(seconds * 16000)) == [s * 16000 for s in starts]


def make_musan_and_rirs(root: Path) -> tuple[Path, Path]:
    musan, rirs = root / "musan", root / "RIRS_NOISES" / "simulated_rirs"
    rng = np.random.default_rng(0)
    for kind, seconds in (("noise", 13.0), ("speech", 8.0), ("music", 4.0)):
        (musan / kind / "set").mkdir(parents=True)
        soundfile.write(musan / kind / "set" / f"{kind}-0000.wav", rng.uniform(-0.5, 0.5, int(seconds * 16000)),
                        16000, subtype="PCM_16")
    for room in ("smallroom", "mediumroom", "largeroom"):
        (rirs / room / "Room001").mkdir(parents=True)
        for i in range(2):
            soundfile.write(rirs / room / "Room001" / f"Room001-{i:05d}.wav", rng.normal(0, 0.1, 800), 16000)
    return musan, rirs


def test_split_musan_and_prepare_rir_feed_the_augmenter(tmp_path: Path) -> None:
    musan, rirs = make_musan_and_rirs(tmp_path / "src")
    split, rir_out = tmp_path / "musan_split", tmp_path / "rirs"
    stale = split / "noise/set/.noise-0000.tmp99999"  # the temporary folder of a killed run
    stale.mkdir(parents=True)
    soundfile.write(stale / "00000.wav", np.zeros(100), 16000)
    assert dataprep.main(["--split_musan", str(musan.parent), "--musan_split_to", str(split),
                          "--prepare_rir", str(tmp_path / "src" / "RIRS_NOISES"), "--rir_to", str(rir_out)]) == 0
    chunks = {p.relative_to(split).as_posix(): soundfile.info(p).frames for p in sorted(split.rglob("*.wav"))}
    assert chunks == {"music/set/music-0000/00000.wav": 64000, "noise/set/noise-0000/00000.wav": 80000,
                      "noise/set/noise-0000/00003.wav": 80000, "noise/set/noise-0000/00006.wav": 80000,
                      "speech/set/speech-0000/00000.wav": 80000, "speech/set/speech-0000/00003.wav": 80000}
    source, _ = soundfile.read(musan / "noise/set/noise-0000.wav", dtype="int16")
    chunk, _ = soundfile.read(split / "noise/set/noise-0000/00006.wav", dtype="int16")
    np.testing.assert_array_equal(chunk, source[6 * 16000:11 * 16000])
    assert sorted(p.name for p in rir_out.iterdir()) == ["mediumroom", "smallroom"]  # largeroom is not used
    assert (rir_out / "smallroom").is_symlink()
    aug = Augmenter(split, rir_out)
    assert len(aug.rirs) == 4 and [len(aug.noise[k]) for k in ("noise", "speech", "music")] == [3, 2, 1]
    before = mtimes(split)
    assert audioprep.split_musan(musan, split, workers=1) == {"split": 0, "skipped": 3}
    assert mtimes(split) == before
    assert audioprep.prepare_rir(rirs, rir_out) == {"smallroom": 2, "mediumroom": 2}


def test_prepare_rir_checks_every_file(tmp_path: Path) -> None:
    _, rirs = make_musan_and_rirs(tmp_path / "src")
    soundfile.write(rirs / "mediumroom/Room001/Room001-00009.wav", np.zeros((100, 2)), 8000)
    copy = tmp_path / "copy"
    with pytest.raises(AudioPrepError, match=r"1 problems in the RIRs under .*copy:\n  Audio file "
                                              r"'.*Room001-00009.wav' is 8000 Hz with 2 channel\(s\); expected 16000"):
        audioprep.prepare_rir(rirs, copy, copy=True)
    assert not (copy / "smallroom").is_symlink() and len(list((copy / "smallroom").rglob("*.wav"))) == 2
    with pytest.raises(AudioPrepError, match="no simulated_rirs with smallroom and mediumroom found"):
        audioprep.prepare_rir(tmp_path, tmp_path / "x")


def test_join_parts_url_list_and_credentials(tmp_path: Path) -> None:
    for part, data in (("vox1_dev_wav_partab", b"world"), ("vox1_dev_wav_partaa", b"hello "),
                       ("vox2_test_aac.zip", b"whole")):
        (tmp_path / part).write_bytes(data)
    assert archives.join_parts(tmp_path) == [tmp_path / "vox1_dev_wav.zip"]
    assert (tmp_path / "vox1_dev_wav.zip").read_bytes() == b"hello world"
    urls = tmp_path / "urls.txt"
    urls.write_text("# mirror\nvoxceleb1 https://example.org/a_partaa\nvoxceleb1 https://example.org/a_partab\n")
    assert archives.read_url_list(urls) == {"voxceleb1": ["https://example.org/a_partaa",
                                                          "https://example.org/a_partab"]}
    urls.write_text("voxceleb1\n")
    with pytest.raises(ArchiveError, match=r"line 1: expected '<dataset> <url>'"):
        archives.read_url_list(urls)
    assert set(archives.DOWNLOADS) == {"voxceleb1", "voxceleb2", "trials", "musan", "rirs"}
    with pytest.raises(ArchiveError, match="VoxCeleb downloads need the username and password"):
        archives.download(tmp_path, ["voxceleb2"], None, None)  # refused before any connection
    with pytest.raises(ArchiveError, match="unknown; choose from voxceleb1, voxceleb2"):
        archives.download(tmp_path, ["vox3"], "u", "p")


def test_steps_need_their_output_folder(tmp_path: Path) -> None:
    for argv in (["--extract", "a.zip"], ["--convert", "src"], ["--split_musan", "m"], ["--prepare_rir", "r"]):
        with pytest.raises(SystemExit):
            dataprep.main(argv)


def test_split_musan_failure_leaves_no_partial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    musan, _ = make_musan_and_rirs(tmp_path / "src")
    split = tmp_path / "musan_split"

    def failing_write(path: Path, audio: np.ndarray) -> None:  # the disk is full at the noise file's second chunk
        if "noise-0000" in path.parent.name and path.name == "00003.wav":
            raise OSError("No space left on device")
        soundfile.write(path, audio, 16000, subtype="PCM_16", format="WAV")

    monkeypatch.setattr(audioprep, "write_wav", failing_write)
    with pytest.raises(AudioPrepError, match=r"1 MUSAN files could not be split:\n  .*noise-0000.wav: No space left"):
        audioprep.split_musan(musan, split, workers=1)
    assert not any((split / "noise" / "set").iterdir())  # its first chunk is not left, nor a temporary folder
    assert (split / "music/set/music-0000/00000.wav").is_file() and (split / "speech/set/speech-0000").is_dir()
