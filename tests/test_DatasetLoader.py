"""Lists (datalists.py), the datasets and the speaker-balanced sampler (DatasetLoader.py)."""

import math
from collections import Counter

import numpy as np
import pytest
import soundfile

from DatasetLoader import SPEEDS, SpeakerBalancedSampler, TrainDataset
from DatasetLoader import TestDataset as EvalDataset  # not collected as a test class
from dtdysv.data.audio import AudioError, crop_samples, load_crop
from dtdysv.data.lists import DataError, TrainList, read_train_list, read_trial_list


def write_wav(path, samples, rate=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (samples, channels) if channels > 1 else samples)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


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


def test_corrupt_and_empty_files_are_refused(tmp_path):
    corrupt = tmp_path / "c.wav"
    corrupt.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AudioError, match=r"Cannot decode audio file '.*c.wav'"):
        EvalDataset(["c.wav"], tmp_path, 10, 2)[0]
    empty = write_wav(tmp_path / "e.wav", 0)
    with pytest.raises(AudioError, match="is empty"):
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


def sine(freq, seconds, rate, phase=0.0):
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


def test_malformed_lines_and_missing_files_come_in_one_error(tmp_path):
    write_wav(tmp_path / "wav/a/v/1.wav", 100)
    lst = tmp_path / "train.txt"
    lst.write_text("a a/v/1.wav\nbroken\na a/v/2.wav\n")
    with pytest.raises(DataError) as err:
        read_train_list(lst, tmp_path / "wav")
    msg = str(err.value)
    assert f"1 malformed lines in '{lst}':\n  line 2: 'broken'" in msg
    assert f"1 listed files do not exist in '{lst}':\n  line 3: {tmp_path / 'wav/a/v/2.wav'}" in msg
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/v/1.wav a/v/1.wav\n1 a/v/1.wav\n0 a/v/1.wav b/v/9.wav\n")
    with pytest.raises(DataError) as err:
        read_trial_list(trials, tmp_path / "wav")
    msg = str(err.value)
    assert "1 malformed lines" in msg and "line 2: '1 a/v/1.wav'" in msg
    assert "1 listed files do not exist" in msg and f"line 3: {tmp_path / 'wav/b/v/9.wav'}" in msg


def test_bad_audio_errors_name_the_list_line(tmp_path):
    write_wav(tmp_path / "wav/a/v/1.wav", 4000)
    write_wav(tmp_path / "wav/a/v/2.wav", 4000, rate=8000)
    lst = tmp_path / "train.txt"
    lst.write_text("a a/v/1.wav\n\na a/v/2.wav\n")
    data = TrainDataset(read_train_list(lst, tmp_path / "wav"), 10)
    with pytest.raises(AudioError, match=rf"Audio file '.*a/v/2.wav' \(line 3 of '{lst}'\) is 8000 Hz with 1 "
                                        r"channel\(s\); expected 16000 Hz mono(.|\n)*--resample"):
        data[((0, 1), 0)]
    (tmp_path / "wav/a/v/2.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=rf"Cannot decode audio file '.*a/v/2.wav' \(line 3 of '{lst}'\)"):
        data[((1, 0), 0)]
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a/v/1.wav a/v/1.wav\n0 a/v/1.wav a/v/2.wav\n")
    test = EvalDataset(["a/v/1.wav", "a/v/2.wav"], tmp_path / "wav", 10, 2,
                       trials=read_trial_list(trials, tmp_path / "wav"))
    assert test[0][0].shape == (2, crop_samples(10))
    with pytest.raises(AudioError, match=rf"Cannot decode(.|\n)*first listed on line 2 of '{trials}'"):
        test[1]


def test_speed_perturbation_changes_speed_and_class(tmp_path):
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.wav"))
        soundfile.write(files[-1], sine(200.0 * (i + 1), 2.0, 16000), 16000, subtype="FLOAT")
    train = TrainList(files=files, labels=np.array([0, 0, 1, 1]), speakers=["a", "b"], lines=[1, 2, 3, 4])
    data = TrainDataset(train, 20, speed_perturb=True)
    assert data.num_classes == 6 and TrainDataset(train, 20).num_classes == 2
    need = crop_samples(20)
    labels = set()
    for seed in range(12):
        crops, label = data[((2, 3), seed)]
        rng = np.random.default_rng(seed)
        k = int(rng.integers(3))
        speed = float(SPEEDS[k])
        assert label == 1 + 2 * k and speed == (1.0, 0.9, 1.1)[k]
        labels.add(label)
        span = math.ceil(need * SPEEDS[k])  # exact: a float 3440 * 1.1 rounds up to 3785
        start = int(rng.integers(0, 32000 - span + 1))  # the first crop's position, drawn after the speed
        expected = 0.5 * np.sin(2 * np.pi * 600.0 * (start + speed * np.arange(need)) / 16000)
        np.testing.assert_allclose(crops[0].numpy(), expected, atol=0.01)
    assert labels == {1, 3, 5}


def most_full_batches(groups_per_speaker, batch_size):
    """Independent reference: the largest B with sum_s min(groups_s, B) >= B * batch_size (B batches of distinct
    speakers can be filled iff no speaker is asked for more than one group per batch)."""
    g = np.asarray(groups_per_speaker)
    return max(b for b in range(g.sum() // batch_size + 1) if np.minimum(g, b).sum() >= b * batch_size)


@pytest.mark.parametrize("counts, per, cap, batch, world", [
    ([30, 3, 12, 7, 9, 40, 2, 11], 2, 10, 4, 1),
    ([60, 5, 5, 5, 4, 3, 2, 2, 1], 1, 100, 3, 1),  # one speaker dominates: its groups cannot all be used
    ([17, 23, 8, 31, 12, 9, 14, 26, 5, 19, 11], 3, 15, 5, 2),
    (list(np.random.default_rng(0).geometric(0.05, 40)), 2, 50, 16, 3),
])
def test_sampler_invariants(counts, per, cap, batch, world):
    labels = make_labels(counts)
    labels = labels[np.random.default_rng(1).permutation(len(labels))]  # list order must not matter
    groups = [min(c, cap) // per for c in counts]
    per_rank = most_full_batches(groups, batch) // world  # every rank runs the same number of steps
    whole = SpeakerBalancedSampler(labels, per, cap, batch, seed=4)
    for epoch in (1, 2):
        whole.set_epoch(epoch)
        full = list(whole)
        ranks = []
        for r in range(world):
            sampler = SpeakerBalancedSampler(labels, per, cap, batch, seed=4, rank=r, world_size=world)
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
            assert len(ranks[-1]) == per_rank * batch and sampler.batches_per_epoch() == per_rank
        used = Counter()
        for items in ranks:
            for b in range(0, len(items), batch):
                speakers = [labels[idx[0]] for idx, _ in items[b:b + batch]]
                assert len(set(speakers)) == batch  # no speaker twice in a batch
                for idx, _ in items[b:b + batch]:
                    assert len(idx) == per and len({labels[i] for i in idx}) == 1
                    used.update(labels[i] for i in idx)
        assert max(used.values()) <= cap
        flat = [i for items in ranks for idx, _ in items for i in idx]
        assert len(flat) == len(set(flat))  # no utterance twice in an epoch, across ranks
        if world == 1:
            assert ranks[0] == full
        else:  # the ranks' (group, seed) items are the single-process epoch's, dealt out batch by batch
            dealt = [item for b in range(per_rank) for r in range(world)
                     for item in ranks[r][b * batch:(b + 1) * batch]]
            assert dealt == full[:len(dealt)]


def test_sampler_resumes_inside_an_epoch():
    labels = make_labels([10] * 8)
    sampler = SpeakerBalancedSampler(labels, 2, 100, 4, seed=9)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, first_batch=4)
    assert list(sampler) == full[4 * 4:] and len(full) == 40
