"""Lists, audio reading and the speaker-balanced sampler."""

from collections import Counter

import numpy as np
import pytest
import soundfile

from DatasetLoader import (
    DataError,
    SpeakerBalancedSampler,
    TestDataset,
    frames_to_samples,
    load_crop,
    load_eval,
    read_train_list,
    read_trial_list,
)


def write_wav(path, samples, rate=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (samples, channels) if channels > 1 else samples)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


def test_crop_sizes():
    assert frames_to_samples(200) == 32240


def test_train_list_maps_sorted_speakers(tmp_path):
    for rel in ("b/v/1.wav", "a/v/1.wav", "a/v/2.wav"):
        write_wav(tmp_path / "wav" / rel, 100)
    lst = tmp_path / "train.txt"
    lst.write_text("b b/v/1.wav\na a/v/1.wav\n\na a/v/2.wav\n")
    train = read_train_list(lst, tmp_path / "wav")
    assert train.speakers == ["a", "b"]
    assert train.labels.tolist() == [1, 0, 0]
    assert train.lines == [1, 2, 4]


def test_malformed_and_missing_lines_are_reported_together(tmp_path):
    write_wav(tmp_path / "wav/a/v/1.wav", 100)
    lst = tmp_path / "train.txt"
    lst.write_text("a a/v/1.wav\na a/v/2.wav extra\nlonely\n")
    with pytest.raises(DataError) as err:
        read_train_list(lst, tmp_path / "wav")
    msg = str(err.value)
    assert "2 malformed lines" in msg and "line 2: 'a a/v/2.wav extra'" in msg and "line 3: 'lonely'" in msg
    lst.write_text("".join(f"a a/v/{i}.wav\n" for i in range(1, 9)))
    with pytest.raises(DataError, match=r"7 listed files do not exist(.|\n)*line 2: .*a/v/2.wav(.|\n)*and 2 more"):
        read_train_list(lst, tmp_path / "wav")


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match=r"'.*nope.txt' \(--train_list\) does not exist"):
        read_train_list(tmp_path / "nope.txt", tmp_path)


def test_trial_lists_labeled_and_unlabeled(tmp_path):
    for rel in ("x/1.wav", "x/2.wav", "y/1.wav"):
        write_wav(tmp_path / rel, 100)
    labeled = tmp_path / "t3.txt"
    labeled.write_text("1 x/1.wav x/2.wav\n0 x/1.wav y/1.wav\n")
    trials = read_trial_list(labeled, tmp_path)
    assert trials.labels.tolist() == [1, 0] and trials.files == ["x/1.wav", "x/2.wav", "y/1.wav"]
    unlabeled = tmp_path / "t2.txt"
    unlabeled.write_text("x/1.wav x/2.wav\nx/1.wav y/1.wav\n")
    assert read_trial_list(unlabeled, tmp_path).labels is None
    bad = tmp_path / "bad.txt"
    bad.write_text("1 x/1.wav x/2.wav\n2 x/1.wav y/1.wav\nx/1.wav\n")
    with pytest.raises(DataError, match=r"2 malformed lines(.|\n)*line 2(.|\n)*line 3"):
        read_trial_list(bad, tmp_path)


def test_crop_reads_the_requested_window(tmp_path):
    path = tmp_path / "a.wav"
    samples = frames_to_samples(20) * 3
    soundfile.write(path, (np.arange(samples) % 30000).astype(np.int16), 16000, subtype="PCM_16")
    crop = load_crop(str(path), 20, np.random.default_rng(1))
    assert crop.shape == (frames_to_samples(20),) and crop.dtype == np.float32
    ints = np.round(crop * 32768).astype(np.int64)
    assert np.all(np.diff(ints) == 1)  # one contiguous window of the ramp
    short = write_wav(tmp_path / "short.wav", 1000)
    crop = load_crop(str(short), 20, np.random.default_rng(1))
    full = soundfile.read(short, dtype="float32")[0]
    assert crop.shape == (frames_to_samples(20),) and np.array_equal(crop[1000:2000], full)


def test_eval_crops_are_evenly_spaced(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, (np.arange(20000) % 30000).astype(np.int16), 16000, subtype="PCM_16")
    crops = load_eval(str(path), 50, 5)
    assert crops.shape == (5, frames_to_samples(50))
    starts = np.round(crops[:, 0] * 32768).astype(int)
    assert starts[0] == 0 and starts[-1] == 20000 - frames_to_samples(50)
    assert load_eval(str(path), 0, 5).shape == (1, 20000)


@pytest.mark.parametrize("rate, channels, expected", [(8000, 1, "8000 Hz with 1 channel"),
                                                      (16000, 2, "16000 Hz with 2 channel")])
def test_wrong_format_is_refused(tmp_path, rate, channels, expected):
    path = write_wav(tmp_path / "a.wav", 4000, rate, channels)
    with pytest.raises(DataError, match=expected):
        load_crop(str(path), 10, np.random.default_rng(0))


def test_corrupt_and_empty_files_are_refused(tmp_path):
    corrupt = tmp_path / "c.wav"
    corrupt.write_bytes(b"RIFF not really a wav")
    with pytest.raises(DataError, match=r"Cannot decode audio file '.*c.wav'"):
        TestDataset(["c.wav"], tmp_path, 10, 2)[0]
    empty = write_wav(tmp_path / "e.wav", 0)
    with pytest.raises(DataError, match="is empty"):
        load_crop(str(empty), 10, np.random.default_rng(0))


def make_labels(counts):
    return np.concatenate([np.full(n, s) for s, n in enumerate(counts)])


def test_sampler_batches_have_distinct_speakers_and_respect_the_cap():
    labels = make_labels([30, 3, 12, 7, 9, 40, 2, 11])
    sampler = SpeakerBalancedSampler(labels, nPerSpeaker=2, max_seg_per_spk=10, batch_size=4, seed=3)
    sampler.set_epoch(1)
    items = list(sampler)
    assert len(items) == len(sampler) and len(items) % 4 == 0
    used = Counter()
    for b in range(0, len(items), 4):
        speakers = [labels[idx[0]] for idx, _ in items[b:b + 4]]
        assert len(set(speakers)) == 4
        for idx, _ in items[b:b + 4]:
            assert len(idx) == 2 and len({labels[i] for i in idx}) == 1
            used.update(labels[i] for i in idx)
    assert max(used.values()) <= 10
    flat = [i for idx, _ in items for i in idx]
    assert len(flat) == len(set(flat))


def test_sampler_defers_instead_of_dropping():
    labels = make_labels([20, 20, 20])  # 30 pairs over 3 speakers, batches of 3 distinct speakers
    sampler = SpeakerBalancedSampler(labels, nPerSpeaker=2, max_seg_per_spk=100, batch_size=3, seed=0)
    assert len(sampler) == 30  # every pair is used: nothing dropped


def test_sampler_is_deterministic_per_epoch_and_varies_across_epochs():
    labels = make_labels([8] * 10)
    a = SpeakerBalancedSampler(labels, 2, 100, 5, seed=7)
    b = SpeakerBalancedSampler(labels, 2, 100, 5, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_ranks_are_disjoint_and_cover_the_epoch():
    labels = make_labels([9] * 12)
    whole = SpeakerBalancedSampler(labels, 3, 100, 4, seed=1)
    ranks = [SpeakerBalancedSampler(labels, 3, 100, 4, seed=1, rank=r, world_size=3) for r in range(3)]
    seen = [set(i for idx, _ in s for i in idx) for s in ranks]
    assert all(len(s) == len(ranks[0]) for s in ranks)
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == {i for idx, _ in whole for i in idx}


def test_sampler_refuses_more_speakers_per_batch_than_exist():
    with pytest.raises(DataError, match="only 3 speakers"):
        SpeakerBalancedSampler(make_labels([4, 4, 4]), 2, 10, 8, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_sampler_epoch_length_is_fixed_and_nothing_is_dropped(seed):
    labels = make_labels([4] * 6)  # 12 pairs, batches of 3 distinct speakers: 4 batches, every epoch
    sampler = SpeakerBalancedSampler(labels, 2, 100, 3, seed=seed)
    for epoch in range(1, 6):
        sampler.set_epoch(epoch)
        items = list(sampler)
        assert len(items) == 12 and sampler.batches_per_epoch() == 4
        for b in range(0, 12, 3):
            assert len({labels[idx[0]] for idx, _ in items[b:b + 3]}) == 3
