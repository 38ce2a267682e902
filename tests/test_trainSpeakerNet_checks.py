"""Settings that cannot work are refused before any expensive work, in one clean line: a warm-up as long as the
training, an AS-norm cohort larger than the training speakers; an oversized head is a warning naming the right
number; --threads sets torch's pool; --help lists the choices of every option that has them."""

import logging

import pytest
import torch

import trainSpeakerNet
from config import Config, build_parser
from conftest import tiny_argv
from DatasetLoader import get_data_loader
from dtdysv.data.lists import read_train_list


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_warmup_as_long_as_the_training_is_one_clean_line(corpus, tmp_path, caplog):
    args = tiny_argv(corpus, tmp_path, "--scheduler", "cosine", "--warmup_epochs", "2", "--max_epoch", "2")
    assert trainSpeakerNet.main(args) == 2
    assert errors(caplog) == ["--scheduler cosine: scheduler 'cosine' needs 0 <= --warmup_epochs < --max_epoch (2), "
                              "got 2.0."]
    assert not (tmp_path / "model").exists()


def test_an_asnorm_cohort_larger_than_the_training_speakers_is_refused_before_training(corpus, tmp_path, caplog):
    assert trainSpeakerNet.main(tiny_argv(corpus, tmp_path, "--score_norm", "asnorm")) == 2  # default top 300
    (message,) = errors(caplog)
    assert "--norm_top_n 300 needs a cohort of at least that many (and 2) speakers" in message
    assert "has 6" in message and "--score_norm snorm" in message
    assert not (tmp_path / "model").exists()


def test_an_oversized_head_is_a_warning_naming_the_right_number(corpus, caplog):
    train = read_train_list(corpus / "train_list.txt", corpus / "train" / "wav")
    cfg = Config(train_list=str(corpus / "train_list.txt"), nClasses=17982, batch_size=3, nPerSpeaker=2,
                 nDataLoaderThread=0)
    with caplog.at_level(logging.WARNING):
        get_data_loader(train, cfg)
    assert "--nClasses 17982 is more than the 6 classes" in caplog.text and "set --nClasses 6" in caplog.text


def test_threads_sets_the_pool_and_a_negative_count_is_refused(corpus, tmp_path, caplog, monkeypatch):
    threads = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    assert trainSpeakerNet.main(tiny_argv(corpus, tmp_path, "--threads", "1", "--eval")) == 2  # no weights yet
    assert seen == [1]
    assert trainSpeakerNet.main(tiny_argv(corpus, tmp_path, "--threads", "-1")) == 2
    assert "--threads is -1; valid: >= 0 (0: torch's default)." in caplog.text
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("option, listed", [("model", "DTDY_ResNet34_quarter"), ("trainfunc", "aamsoftmax"),
                                            ("optimizer", "sgd"), ("scheduler", "cosine"),
                                            ("score_norm", "asnorm"), ("mixedprec_dtype", "bf16")])
def test_help_lists_the_choices(option, listed):
    helptext = next(a.help for a in build_parser()._actions if f"--{option}" in a.option_strings)
    assert "choices: " in helptext and listed in helptext
