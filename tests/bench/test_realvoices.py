"""bench/realvoices without the network: clip clean-up, the speaker split, balanced trial lists, the licence
lookup, and a whole build from a fake unpacked package."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bench.realvoices import build_corpus
from bench.realvoices.corpus import (
    CorpusError,
    assign_splits,
    balanced_trials,
    join_clips,
    median_f0,
    pitch_spread,
    trim_silence,
)
from bench.realvoices.sources import Source, SourceError, Unit, copyright_entry, language_group
from dtdysv.data.lists import read_train_list, read_trial_list

RATE = 16000


def tone(seconds, rng, frequency=220.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_trim_silence_keeps_the_speech_and_a_margin():
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), tone(0.3, rng), np.zeros(RATE, np.float32)])
    trimmed = trim_silence(audio, margin_s=0.1)
    assert len(trimmed) == pytest.approx(0.5 * RATE, abs=160)  # 0.3 s + 2 x 0.1 s, to a 10-ms frame
    assert np.abs(trimmed).max() == np.abs(audio).max()
    assert trim_silence(np.zeros(RATE, np.float32)).size == 0


def test_join_clips_reaches_the_target_length_in_order():
    clips = [np.full(int(0.4 * RATE), k + 1, np.float32) for k in range(5)]
    joined = join_clips(clips, target_s=1.0, gap_s=0.1)
    assert [len(j) for j in joined] == [int(1.4 * RATE), int(0.9 * RATE)]  # 3 clips + 2 gaps, then 2 clips + 1 gap
    assert list(np.unique(joined[0])) == [0, 1, 2, 3] and list(np.unique(joined[1])) == [0, 4, 5]


@pytest.mark.parametrize("f0", [95.0, 150.0, 240.0])
def test_median_f0_of_a_harmonic_voice(f0):
    t = np.arange(RATE) / RATE
    voice = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)).astype(np.float32)
    assert median_f0(voice) == pytest.approx(f0, rel=0.03)
    assert np.isnan(median_f0(np.zeros(RATE, np.float32))) and np.isnan(median_f0(voice[:100]))


def test_pitch_spread_tells_one_voice_from_two():
    assert pitch_spread([120, 118, 125, 122, 119, float("nan")]) == pytest.approx(1.0, abs=0.05)
    assert pitch_spread([110, 115, 112, 240, 250, 245, 238, 108]) > 1.8
    assert np.isnan(pitch_spread([120, 130]))


GROUPS = {f"g{k:02d}": [f"g{k:02d}-u{j}" for j in range(1 + k % 3)] for k in range(20)}


def test_splits_are_disjoint_keep_groups_together_and_are_deterministic():
    split = assign_splits(GROUPS, 0.3, 0.15, seed=1)
    assert split == assign_splits(GROUPS, 0.3, 0.15, seed=1)
    assert split != assign_splits(GROUPS, 0.3, 0.15, seed=2)
    assert set(split) == {u for units in GROUPS.values() for u in units}
    for units in GROUPS.values():
        assert len({split[u] for u in units}) == 1  # a group never straddles splits
    counts = Counter(split.values())
    total = sum(counts.values())
    assert 0.3 * total <= counts["test"] < 0.3 * total + 3 and 0.15 * total <= counts["val"] < 0.15 * total + 3
    groups_in = Counter(split[units[0]] for units in GROUPS.values())
    assert groups_in["test"] >= 2 and groups_in["val"] >= 2 and groups_in["train"] >= 1


def test_a_group_of_much_audio_does_not_leave_training_short():
    seconds = {g: 100.0 for g in GROUPS} | {"g07": 3000.0, "g13": 2500.0}
    total = sum(seconds.values())
    for seed in range(10):
        split = assign_splits(GROUPS, 0.3, 0.15, seed, seconds)
        held = Counter()
        for group, units in GROUPS.items():
            held[split[units[0]]] += seconds[group]
        assert held["test"] <= 1.2 * 0.3 * total and held["val"] <= 1.2 * 0.15 * total
        assert held["train"] >= (1 - 1.2 * 0.45) * total


def test_splits_refuse_too_few_groups_or_bad_fractions():
    with pytest.raises(CorpusError, match="at least 5"):
        assign_splits({"a": ["a"], "b": ["b"]}, 0.3, 0.15, seed=0)
    with pytest.raises(CorpusError, match="sum below 1"):
        assign_splits(GROUPS, 0.6, 0.5, seed=0)
    with pytest.raises(CorpusError, match="do not fill the splits"):
        assign_splits({g: GROUPS[g] for g in list(GROUPS)[:5]}, 0.8, 0.15, seed=0)


def test_trials_are_balanced_spread_and_never_pair_one_group():
    files = {u: [f"{u}/s/{n:05d}.wav" for n in range(1, 4 + len(u) % 5)] for u in ("a1", "a2", "b1", "c1", "d22")}
    group = {"a1": "a", "a2": "a", "b1": "b", "c1": "c", "d22": "d"}
    trials = balanced_trials(files, group, 80, seed=3)
    assert trials == balanced_trials(files, group, 80, seed=3) and trials != balanced_trials(files, group, 80, 4)
    assert len(trials) == 80 and sum(t[0] for t in trials) == 40
    speaker = {f: u for u, names in files.items() for f in names}
    pairs = [frozenset(t[1:]) for t in trials]
    assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)  # no pair twice, no file with itself
    for label, enroll, test in trials:
        same = speaker[enroll] == speaker[test]
        assert label == int(same)
        if not same:
            assert group[speaker[enroll]] != group[speaker[test]]  # units that may be one person never meet
    per_speaker = Counter(speaker[e] for label, e, _ in trials if label)
    assert set(per_speaker) == set(files) and max(per_speaker.values()) - min(per_speaker.values()) <= 1
    assert trials == sorted(trials, key=lambda t: t[1:])


def test_trials_shrink_to_what_exists_and_stay_balanced():
    files = {"a": ["a/s/1.wav", "a/s/2.wav"], "b": ["b/s/1.wav", "b/s/2.wav"]}
    trials = balanced_trials(files, {"a": "a", "b": "b"}, 100, seed=0)
    assert len(trials) == 4 and sum(t[0] for t in trials) == 2
    with pytest.raises(CorpusError, match="No balanced trial list"):
        balanced_trials({"a": ["a/s/1.wav"], "b": ["b/s/1.wav"]}, {"a": "a", "b": "b"}, 10, seed=0)


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: voices

Files: *
Copyright: 2001 A. Person
License: GPL-2+

Files: */3.ogg
       README
Copyright: 2014 Someone
License: GPL-3 or LGPL-3

Files: */5.ogg
Copyright: 2015 Other
License: Proprietary-Voice

License: GPL-2+
 On Debian systems, the complete text ...
"""


def write_copyright(root, package):
    path = root / "usr/share/doc" / package / "copyright"
    path.parent.mkdir(parents=True)
    path.write_text(COPYRIGHT)


def test_licence_is_read_from_the_copyright_paragraph_of_the_recordings(tmp_path):
    write_copyright(tmp_path, "voices")
    assert copyright_entry(tmp_path, "voices", "*") == {"files": "*", "copyright": "2001 A. Person",
                                                        "licence": "GPL-2+"}
    assert copyright_entry(tmp_path, "voices", "*/3.ogg")["licence"] == "GPL-3 or LGPL-3"
    with pytest.raises(SourceError, match="'Proprietary-Voice', not one that the corpus accepts"):
        copyright_entry(tmp_path, "voices", "*/5.ogg")
    with pytest.raises(SourceError, match="no 'Files:' paragraph listing"):
        copyright_entry(tmp_path, "voices", "sounds/*")


def test_language_groups():
    assert [language_group(x) for x in ("pt_BR", "sr@latin", "nn", "nb", "en_GB", "fr")] == \
        ["pt", "sr", "no", "no", "en", "fr"]


def fake_package(root, rng):
    """Eight language folders of 10 clips; 'fr' has a second recording format, 'en' a copy of a 'de' file,
    'xx' clips too short to keep."""
    write_copyright(root, "fake-voices")
    sounds = root / "usr/share/fake"
    for k, language in enumerate(("en", "en_GB", "fr", "de", "it", "nl", "sv", "da", "xx")):
        for n in range(10):
            seconds = 0.3 if language == "xx" else 0.8 + 0.1 * (n % 4)
            rate = 8000 if language == "fr" and n < 5 else RATE
            audio = tone(seconds, rng, 120 + 20 * k + n)
            if rate != RATE:
                audio = audio[::2]
            path = sounds / language / f"w{n}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, np.concatenate([np.zeros(800, np.float32), audio]), rate)
    (sounds / "en" / "w0.wav").write_bytes((sounds / "de" / "w0.wav").read_bytes())


def fake_units(root):
    sounds = root / "usr/share/fake"
    return [Unit(f"fake-{p.name}", language_group(p.name), "fake-voices", p.name, "words", "*",
                 tuple(sorted(p.glob("*.wav")))) for p in sorted(sounds.iterdir())]


def build_fake(tmp_path, monkeypatch):
    """The corpus of a fake package, built with the download and dpkg calls replaced: (its folder, its manifest)."""
    root = tmp_path / "cache" / "root" / "fake-voices"
    fake_package(root, np.random.default_rng(0))
    source = Source("fake-voices", "words", "one folder, one voice", fake_units)
    monkeypatch.setitem(build_corpus.PACKAGES, "fake-voices", source)
    monkeypatch.setattr(build_corpus, "fetch", lambda package, cache: root)
    monkeypatch.setattr(build_corpus, "deb_of", lambda package, cache: Path(build_corpus.__file__))
    monkeypatch.setattr(build_corpus, "deb_field", lambda deb, name: "1.0-1")
    out = tmp_path / "corpus"
    return out, build_corpus.build(out, tmp_path / "cache", ["fake-voices"], seed=0, test_fraction=0.3,
                                   val_fraction=0.15, test_trials=40, val_trials=20, min_seconds=0.5, min_files=5,
                                   max_pitch_spread=1.5)


def test_build_writes_lists_in_the_framework_formats(tmp_path, monkeypatch):
    out, manifest = build_fake(tmp_path, monkeypatch)
    speakers = {r["speaker"]: r for r in manifest["speakers"]}
    assert {"fake-fr-8000hz", "fake-fr-16000hz"} <= set(speakers) and "fake-fr" not in speakers
    assert speakers["fake-en"]["left_out"]["duplicate of another file"] == 1
    assert speakers["fake-xx"]["files"] == [] and "fewer than --min_files" in speakers["fake-xx"]["left_out_speaker"]
    assert speakers["fake-en"]["licence"] == "GPL-2+" and manifest["packages"][0]["version"] == "1.0-1"
    wav = out / "wav"
    train = read_train_list(out / "train_list.txt", wav)
    full = read_train_list(out / "train_full_list.txt", wav)
    val = read_trial_list(out / "val_trials.txt", wav)
    test = read_trial_list(out / "test_trials.txt", wav)
    speaker_of = {name: name.split("/")[0] for trials in (val, test) for name in trials.files}
    val_speakers = {speaker_of[f] for f in val.files}
    test_speakers = {speaker_of[f] for f in test.files}
    assert not test_speakers & set(full.speakers) and not val_speakers & set(train.speakers)
    assert val_speakers <= set(full.speakers) and set(full.speakers) == set(train.speakers) | val_speakers
    assert 2 * test.labels.sum() == len(test.labels) and 2 * val.labels.sum() == len(val.labels)
    for name in test.files[:3]:
        info = soundfile.info(wav / name)
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16") and info.duration >= 0.5
    # the en and en_GB folders may be one person: same split, never a non-target pair
    assert speakers["fake-en"]["split"] == speakers["fake-en_GB"]["split"]
    assert manifest["splits"]["test"]["trials"] == len(test.labels)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert "### fake-voices 1.0-1" in (out / "MANIFEST.md").read_text()
    again = build_corpus.build(out, tmp_path / "cache", ["fake-voices"], 0, 0.3, 0.15, 40, 20, 0.5, 5, 1.5)
    assert again == manifest and (out / "test_trials.txt").read_text().count("\n") == len(test.labels)


def test_the_mfcc_floor_scores_the_test_trials_into_a_result_folder(tmp_path, monkeypatch):
    from bench.realvoices import run_table
    from dtdysv.evaluation.results import RAW, list_folders, read_list_metrics
    from dtdysv.summary import summary_rows

    out, manifest = build_fake(tmp_path, monkeypatch)
    folder = run_table.mfcc_floor(out, tmp_path / "exps")
    (list_folder,) = list_folders(folder / "result").values()
    metrics = read_list_metrics(list_folder)["variants"][RAW]
    assert metrics["n_trials"] == manifest["splits"]["test"]["trials"] and metrics["protocol"] == "mfcc_floor"
    assert 0 <= metrics["eer_percent"] <= 100 and len(metrics["eer_ci95_percent"]) == 2
    (row,) = summary_rows([folder])
    assert row["eer_percent"] == metrics["eer_percent"] and row["list"] == "test_trials"
    # the validation split's floor, the bar of recipe tuning: its own trials, folder and training statistics
    assert run_table.main(["--corpus", str(out), "--out", str(tmp_path / "exps"), "--validation"]) == 0
    (val_folder,) = list_folders(tmp_path / "exps" / "mfcc_floor_val" / "result").values()
    val = read_list_metrics(val_folder)["variants"][RAW]
    assert val_folder.name == "val_trials" and val["n_trials"] == manifest["splits"]["val"]["trials"]
    assert read_list_metrics(list_folder)["variants"][RAW] == metrics  # the test floor untouched
    with pytest.raises(SystemExit):  # it trains nothing, so training options are a mistake, not ignored
        run_table.main(["--corpus", str(out), "--validation", "--seeds", "1"])
