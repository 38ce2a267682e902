"""The embed stage's cache: a test file changed on disk is embedded again (only it), a cache of other --resample is
rebuilt; an audio error raised in a DataLoader worker reaches the user as its own message."""

import dataclasses
import shutil

import numpy as np
import pytest
import soundfile
import torch

import trainSpeakerNet
from config import Config
from conftest import tiny_argv
from dtdysv.data.lists import read_trial_list
from dtdysv.evaluation import pipeline
from dtdysv.evaluation.results import load_npz
from dtdysv.runtime import setup as runtime
from SpeakerNet import Embedder


@pytest.fixture()
def copied(corpus, tmp_path):
    """The demo corpus's test files and list, copied so that a test may change them."""
    shutil.copytree(corpus / "test" / "wav", tmp_path / "wav")
    shutil.copy(corpus / "test_list.txt", tmp_path / "test_list.txt")
    return tmp_path


def evaluate(cfg: Config) -> dict:
    torch.manual_seed(0)
    net = runtime.build_net(cfg)
    trials = [read_trial_list(p, cfg.test_path) for p in cfg.test_list]
    return pipeline.evaluate(Embedder(net.model, torch.device("cpu")), trials, cfg, tmp_result(cfg),
                             runtime.test_normalize(net.loss), show_progress=False)


def tmp_result(cfg: Config):
    from pathlib import Path

    return Path(cfg.save_path) / "result"


def test_a_changed_test_file_is_embedded_again_and_only_it(copied, caplog):
    cfg = Config(model="ResNet34_quarter", encoder_type="SAP", nOut=16, n_mels=24, trainfunc="softmax", nClasses=6,
                 eval_frames=0, nDataLoaderThread=0, test_path=str(copied / "wav"),
                 test_list=[str(copied / "test_list.txt")], save_path=str(copied / "exp"), bootstrap=0)
    evaluate(cfg)
    files = read_trial_list(cfg.test_list[0], cfg.test_path).files
    first, other = files[0], files[1]
    before = load_npz(tmp_result(cfg) / "embeddings.npz")[1]
    shutil.copy(copied / "wav" / other, copied / "wav" / first)  # another voice under the same name
    caplog.clear()
    with caplog.at_level("INFO"):
        evaluate(cfg)
    assert f"1 cached files changed on disk since they were embedded (e.g. '{first}')" in caplog.text
    assert "embedded 1 test files" in caplog.text
    after = load_npz(tmp_result(cfg) / "embeddings.npz")[1]
    row = {name: i for i, name in enumerate(after["names"].tolist())}
    old_row = {name: i for i, name in enumerate(before["names"].tolist())}
    # the same audio, embedded in another batch: equal to rounding
    np.testing.assert_allclose(after["embeddings"][row[first]], before["embeddings"][old_row[other]], rtol=1e-5,
                               atol=1e-4)
    for name in files[2:]:  # the others are reused as they were
        np.testing.assert_array_equal(after["embeddings"][row[name]], before["embeddings"][old_row[name]])
    caplog.clear()
    with caplog.at_level("INFO"):  # nothing changed: all reused
        evaluate(cfg)
    assert "reusing the cached embeddings of all" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        evaluate(dataclasses.replace(cfg, resample=True))
    assert "does not fit (resample: cached False, now True)" in caplog.text


@pytest.mark.slow
def test_an_audio_error_in_a_loader_worker_is_reported_as_itself(corpus, copied, caplog):
    save = copied / "exp"
    assert trainSpeakerNet.main(tiny_argv(corpus, save, "--max_epoch", "1")) == 0
    files = read_trial_list(copied / "test_list.txt", copied / "wav").files
    bad = copied / "wav" / files[0]
    audio, rate = soundfile.read(bad, dtype="float32")
    audio[100] = np.nan
    soundfile.write(bad, audio, rate, subtype="FLOAT")
    caplog.clear()
    args = tiny_argv(corpus, save, "--eval", "--nDataLoaderThread", "1", "--test_path", str(copied / "wav"),
                     "--test_list", str(copied / "test_list.txt"))
    assert trainSpeakerNet.main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "Original Traceback" not in errors[0] and "Caught" not in errors[0]
    assert files[0] in errors[0] and "NaN" in errors[0] and "first listed on line" in errors[0]
