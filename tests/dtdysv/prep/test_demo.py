"""The demo corpus (demodata.py, speechsynth.py) and the data-preparation CLI (dataprep.py), on tiny corpora."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep
from dtdysv.data import lists as datalists
from dtdysv.prep import demo as demodata
from dtdysv.prep import speechsynth

SMALL = {"n_train_speakers": 3, "n_test_speakers": 3, "utts_per_speaker": 4, "test_utts_per_speaker": 4,
         "videos_per_speaker": 2, "n_trials": 20, "min_seconds": 1.0, "max_seconds": 1.2}
DEMO_ARGS = ["--demo_train_speakers", "3", "--demo_test_speakers", "3", "--demo_utts", "4", "--demo_test_utts", "4",
             "--demo_videos", "2", "--demo_trials", "20", "--demo_min_seconds", "1.0", "--demo_max_seconds", "1.2"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, demodata.make_demo_corpus(out, seed=0, **SMALL)


def read_train_list(out: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for line in (out / "train_list.txt").read_text().splitlines()]


def read_trials(out: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split(" ")) for line in (out / "test_list.txt").read_text().splitlines()]


def check_wav(path: Path) -> int:
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "WAV", "PCM_16"), path
    audio, _ = soundfile.read(path, dtype="int16")
    assert audio.ndim == 1 and np.abs(audio.astype(np.int64)).max() > 1000, path  # mono, not silent
    return info.frames


def test_layout_and_train_list(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    rows = read_train_list(out)
    assert len(rows) == 3 * 4 == summary["n_train_utterances"]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)
    assert sorted({speaker for speaker, _ in rows}) == ["id00001", "id00002", "id00003"]
    for speaker, rel in rows:
        parts = rel.split("/")
        assert len(parts) == 3 and parts[0] == speaker and len(parts[1]) == 11, rel
        assert parts[2].endswith(".wav") and len(parts[2]) == len("00001.wav"), rel
        frames = check_wav(out / "train" / "wav" / rel)
        assert 16000 * SMALL["min_seconds"] - 80 <= frames <= 16000 * SMALL["max_seconds"], (rel, frames)
    # every speaker has its utterances in 2 sessions ("videos"), numbered from 00001 in each
    for speaker in ("id00001", "id00002", "id00003"):
        videos: dict[str, list[str]] = {}
        for s, rel in rows:
            if s == speaker:
                videos.setdefault(rel.split("/")[1], []).append(rel.split("/")[2])
        assert len(videos) == 2 and all(sorted(f) == ["00001.wav", "00002.wav"] for f in videos.values())
    # nothing on disk that the list does not name
    on_disk = sorted(p.relative_to(out / "train" / "wav").as_posix() for p in (out / "train" / "wav").rglob("*.wav"))
    assert on_disk == sorted(rel for _, rel in rows)


def test_trial_list(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    trials = read_trials(out)
    test_files = sorted(p.relative_to(out / "test" / "wav").as_posix() for p in (out / "test" / "wav").rglob("*.wav"))
    assert len(test_files) == 3 * 4
    assert len(trials) == 20 == summary["n_trials"]
    assert sum(label == "1" for label, _, _ in trials) == 10 == summary["n_target_trials"]
    for label, enroll, test in trials:
        assert label in ("0", "1") and enroll != test
        assert label == str(int(enroll.split("/")[0] == test.split("/")[0])), (label, enroll, test)
        assert enroll in test_files and test in test_files
    assert [t[1:] for t in trials] == sorted(t[1:] for t in trials)  # grouped by enrollment, labels mixed
    pairs = [frozenset((e, t)) for _, e, t in trials]
    assert len(set(pairs)) == len(pairs)  # no pair twice, in either order
    for rel in {f for _, e, t in trials for f in (e, t)}:
        check_wav(out / "test" / "wav" / rel)
    train_speakers = {speaker for speaker, _ in read_train_list(out)}
    test_speakers = {rel.split("/")[0] for rel in test_files}
    assert test_speakers == {"id10001", "id10002", "id10003"} and not train_speakers & test_speakers


def test_info_and_completeness(corpus: tuple[Path, dict]) -> None:
    out, summary = corpus
    info = json.loads((out / demodata.INFO_FILE).read_text())
    assert info["complete"] and info["settings"] == {**SMALL, "seed": 0, "calibration_speakers": 0}
    assert demodata.demo_corpus_complete(out, {**SMALL, "seed": 0})
    assert not demodata.demo_corpus_complete(out, {**SMALL, "seed": 1})
    assert not demodata.demo_corpus_complete(out, {**SMALL, "seed": 0, "n_trials": 22})
    assert not demodata.demo_corpus_complete(out, {"seed": 0})  # the other settings at their (bigger) defaults


def test_deterministic_and_seeded(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = corpus
    demodata.make_demo_corpus(tmp_path / "again", seed=0, **SMALL)
    first, again = tree_bytes(out), tree_bytes(tmp_path / "again")
    assert sorted(first) == sorted(again)
    assert all(first[name] == again[name] for name in first)
    demodata.make_demo_corpus(tmp_path / "other", seed=1, **SMALL)
    other = tree_bytes(tmp_path / "other")
    first_wavs = [b for name, b in first.items() if name.endswith(".wav")]
    other_wavs = [b for name, b in other.items() if name.endswith(".wav")]
    assert len(other_wavs) == len(first_wavs) and not set(first_wavs) & set(other_wavs)
    # a speaker's recordings do not depend on how many other speakers there are
    demodata.make_demo_corpus(tmp_path / "fewer", seed=0, **{**SMALL, "n_train_speakers": 2})
    fewer = {n: b for n, b in tree_bytes(tmp_path / "fewer").items() if n.startswith("train/wav/")}
    assert len(fewer) == 2 * 4 and all(first[name] == b for name, b in fewer.items())


def test_speakers_and_utterances_differ(corpus: tuple[Path, dict]) -> None:
    out, _ = corpus
    voices = [speechsynth.draw_voice(np.random.default_rng([0, 0, s, 0])) for s in range(3)]
    assert len({round(v.f0_hz, 3) for v in voices}) == 3
    audio = [soundfile.read(out / "train" / "wav" / rel, dtype="int16")[0] for _, rel in read_train_list(out)]
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(audio, 2) if a.size == b.size)


@pytest.mark.parametrize("bad", [{"n_train_speakers": 1}, {"test_utts_per_speaker": 1}, {"videos_per_speaker": 0},
                                 {"videos_per_speaker": 5}, {"min_seconds": 3.0, "max_seconds": 2.0},
                                 {"n_trials": 2.5}])
def test_bad_settings_raise(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(demodata.DemoCorpusError, match=next(iter(bad))):
        demodata.make_demo_corpus(tmp_path, **{**SMALL, **bad})
    assert not any(tmp_path.iterdir())


def test_refuses_to_replace_other_data(tmp_path: Path) -> None:
    (tmp_path / "train" / "wav" / "id00012").mkdir(parents=True)
    with pytest.raises(demodata.DemoCorpusError, match="not a demo corpus"):
        demodata.make_demo_corpus(tmp_path, **SMALL)
    assert (tmp_path / "train" / "wav" / "id00012").is_dir()


def test_dataprep_builds_then_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "demo"
    assert dataprep.main(["--make_demo", str(out), "--demo_seed", "3", *DEMO_ARGS]) == 0
    info = json.loads((out / demodata.INFO_FILE).read_text())
    assert info["complete"] and info["settings"] == {**SMALL, "seed": 3, "calibration_speakers": 0}
    before = tree_bytes(out)

    calls = []
    monkeypatch.setattr(dataprep, "make_demo_corpus", lambda out_dir, **settings: calls.append(settings) or {})
    with caplog.at_level("INFO", logger="dataprep"):
        assert dataprep.main(["--make_demo", str(out), "--demo_seed", "3", *DEMO_ARGS]) == 0
    assert calls == [] and "skipping" in caplog.text and tree_bytes(out) == before
    assert dataprep.main(["--make_demo", str(out), "--demo_seed", "4", *DEMO_ARGS]) == 0  # other settings: rebuild
    assert calls == [{**SMALL, "seed": 4, "calibration_speakers": 0}]
    (out / "test" / "wav" / read_trials(out)[0][1]).unlink()  # an incomplete corpus is rebuilt too
    assert dataprep.main(["--make_demo", str(out), "--demo_seed", "3", *DEMO_ARGS]) == 0
    assert calls[-1] == {**SMALL, "seed": 3, "calibration_speakers": 0}


def test_make_list(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = corpus
    listed = tmp_path / "lists" / "train.txt"
    assert dataprep.main(["--make_list", "--source", str(out / "train" / "wav"), "--out", str(listed)]) == 0
    assert listed.read_text() == (out / "train_list.txt").read_text()

    source = tmp_path / "tree"
    for rel in ("idB/vid2/00002.wav", "idB/vid2/00001.wav", "idA/vid9/00001.wav", "idB/vid1/00003.wav"):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(b"")
    (source / "idA" / "notes.txt").write_text("ignored")
    assert datalists.write_train_list(source, listed) == 4
    assert listed.read_text() == ("idA idA/vid9/00001.wav\nidB idB/vid1/00003.wav\n"
                                  "idB idB/vid2/00001.wav\nidB idB/vid2/00002.wav\n")

    (source / "idA" / "stray.wav").write_bytes(b"")
    with pytest.raises(datalists.DataError, match="idA/stray.wav"):
        datalists.write_train_list(source, listed)
    assert dataprep.main(["--make_list", "--source", str(tmp_path / "missing"), "--out", str(listed)]) == 2
    with pytest.raises(SystemExit):
        dataprep.main(["--make_list", "--source", str(source)])  # no --out
    with pytest.raises(SystemExit):
        dataprep.main([])  # no step


def test_calibration_speakers_make_a_balanced_list_of_voices_held_out_from_training_and_test(corpus, tmp_path):
    plain, _ = corpus
    out = tmp_path / "calibrated"
    summary = demodata.make_demo_corpus(out, seed=0, calibration_speakers=3, **SMALL)
    assert summary["calibration_speakers"] == 3
    calibration = [line.split(" ") for line in (out / "calibration_list.txt").read_text().splitlines()]
    assert len(calibration) == SMALL["n_trials"]
    assert sum(label == "1" for label, _, _ in calibration) == SMALL["n_trials"] // 2
    speakers = {path.split("/")[0] for _, *pair in calibration for path in pair}
    assert len(speakers) == 3 and all(s.startswith("id2") for s in speakers)
    assert all((out / "test" / "wav" / path).is_file() for _, *pair in calibration for path in pair)
    test_speakers = {path.split("/")[0] for _, *pair in read_trials(out) for path in pair}
    train_speakers = {speaker for speaker, _ in read_train_list(out)}
    assert not speakers & (test_speakers | train_speakers)
    # the training and test parts are those of the same seed without calibration speakers
    assert (out / "test_list.txt").read_bytes() == (plain / "test_list.txt").read_bytes()
    assert (out / "train_list.txt").read_bytes() == (plain / "train_list.txt").read_bytes()
    assert demodata.demo_corpus_complete(out, {"seed": 0, "calibration_speakers": 3, **SMALL})
    (out / "test" / "wav" / calibration[0][1]).unlink()  # a lost calibration file: the corpus is not complete
    assert not demodata.demo_corpus_complete(out, {"seed": 0, "calibration_speakers": 3, **SMALL})
    assert not demodata.demo_corpus_complete(out, {"seed": 0, **SMALL})  # other settings
