"""Train lists that train less than they seem to: repeated lines, and speakers that can never fill a group of
nPerSpeaker utterances. Both are counted and warned about, once."""

import logging

import numpy as np
import pytest
import soundfile

from dtdysv.data.lists import read_train_list
from DatasetLoader import SpeakerBalancedSampler


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def wavs(tmp_path):
    root = tmp_path / "wav"
    for rel in ("a/v/1.wav", "a/v/2.wav", "b/v/1.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / rel, np.zeros(1600), 16000, subtype="PCM_16")
    return root


def test_repeated_train_list_lines_are_counted(tmp_path, wavs, caplog):
    path = tmp_path / "train.txt"
    path.write_text("a a/v/1.wav\na a/v/2.wav\na a/v/1.wav\nb b/v/1.wav\n\nb b/v/1.wav\n")
    with caplog.at_level(logging.WARNING):
        train = read_train_list(path, wavs)
    assert len(train.files) == 5  # kept: a repeat may be meant (oversampling)
    assert warnings_of(caplog) == [f"2 lines of '{path}' list a file already listed (e.g. line 3 repeats line 1): "
                                   f"each copy is sampled as its own utterance; remove the repeats unless that is "
                                   f"meant"]
    caplog.clear()
    path.write_text("a a/v/1.wav\na a/v/2.wav\nb b/v/1.wav\n")
    with caplog.at_level(logging.WARNING):
        read_train_list(path, wavs)
    assert warnings_of(caplog) == []


def test_speakers_that_cannot_fill_a_group_are_counted(caplog):
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4])  # speakers 1 and 3 have one utterance, nPerSpeaker is 2
    with caplog.at_level(logging.WARNING):
        sampler = SpeakerBalancedSampler(labels, nPerSpeaker=2, max_seg_per_spk=100, batch_size=2, seed=0)
        sampler.set_epoch(1)
        groups = sampler.groups()
    assert warnings_of(caplog) == ["2 of the 5 speakers of the train list have fewer than --nPerSpeaker 2 utterances "
                                   "and are never sampled (2 utterances unused); their labels (positions among the "
                                   "sorted speaker ids): 1, 3"]
    assert not {1, 3} & {int(labels[i]) for g in groups for i in g}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SpeakerBalancedSampler(labels, nPerSpeaker=2, max_seg_per_spk=100, batch_size=2, seed=0, rank=1,
                               world_size=2)  # one warning per run: rank 0's
        SpeakerBalancedSampler(labels, nPerSpeaker=1, max_seg_per_spk=100, batch_size=2, seed=0)
    assert warnings_of(caplog) == []
