"""averageCheckpoints.py: the mean of a run's checkpoints, usable by --eval; bad requests refused."""

import json

import pytest
import torch

import averageCheckpoints
import trainSpeakerNet
from conftest import tiny_argv
from dtdysv.runtime import checkpoint as ckpt


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("avg")
    assert trainSpeakerNet.main(tiny_argv(corpus, save, "--max_epoch", "3", "--test_interval", "3",
                                          "--save_interval", "1")) == 0
    return save


@pytest.mark.slow
def test_save_interval_keeps_a_checkpoint_per_epoch_without_evaluating(run):
    assert [p.name for p in ckpt.numbered_checkpoints(run)] == [
        "model000000001.model", "model000000002.model", "model000000003.model"]
    assert (run / "result" / "train.log").read_text().count("test_list: EER") == 1  # evaluated at epoch 3 only


def test_last_n_is_the_mean_of_the_newest_checkpoints(run):
    assert averageCheckpoints.main(["--save_path", str(run), "--last", "2"]) == 0
    out = run / "model" / "average_last2.model"
    avg, two, three = (ckpt.read(p) for p in (out, run / "model/model000000002.model",
                                              run / "model/model000000003.model"))
    assert avg["format"] == ckpt.FORMAT and avg["epoch"] == 3 and avg["config"] == three["config"]
    assert avg["averaged_from"] == [str(run / "model/model000000002.model"), str(run / "model/model000000003.model")]
    for key, value in avg["model"].items():
        if value.is_floating_point():  # weights and BatchNorm statistics
            torch.testing.assert_close(value, (two["model"][key] + three["model"][key]) / 2)
        else:  # counters are the newest checkpoint's
            assert torch.equal(value, three["model"][key]), key
    assert not torch.equal(two["model"]["bn1.running_mean"], three["model"]["bn1.running_mean"])
    torch.testing.assert_close(avg["loss"]["softmax.fc.weight"],
                               (two["loss"]["softmax.fc.weight"] + three["loss"]["softmax.fc.weight"]) / 2)
    assert "optimizer" not in avg  # not a training state: resume keeps using last.model
    assert ckpt.latest_checkpoint(run) == run / "model" / "last.model"


def test_eval_accepts_an_averaged_checkpoint(corpus, run, tmp_path):
    out = tmp_path / "avg.model"
    paths = [str(run / f"model/model00000000{e}.model") for e in (1, 2, 3)]
    assert averageCheckpoints.main(["--checkpoints", *paths, "--out", str(out)]) == 0
    save = tmp_path / "eval"
    assert trainSpeakerNet.main(tiny_argv(corpus, save, "--eval", "--initial_model", str(out))) == 0
    metrics = json.loads((save / "result" / "test_list" / "metrics.json").read_text())["variants"]["raw"]
    assert metrics["n_trials"] == len((corpus / "test_list.txt").read_text().splitlines())


def test_bad_requests_are_refused_and_inputs_kept(corpus, run, tmp_path, caplog):
    first = run / "model" / "model000000001.model"
    before = first.read_bytes()
    assert averageCheckpoints.main(["--save_path", str(run), "--last", "9"]) == 2
    assert "holds 3 numbered checkpoints" in caplog.text and "--save_interval 1" in caplog.text
    assert averageCheckpoints.main(["--checkpoints", str(first), str(run / "model" / ".." / "model" / first.name),
                                    "--out", str(tmp_path / "twice.model")]) == 2
    assert "names the same file more than once" in caplog.text and not (tmp_path / "twice.model").exists()
    assert averageCheckpoints.main(["--checkpoints", str(first), str(run / "model/model000000002.model"),
                                    "--out", str(first)]) == 2
    assert "is one of the checkpoints" in caplog.text
    assert averageCheckpoints.main(["--checkpoints", str(first)]) == 2
    other = tmp_path / "other"
    assert trainSpeakerNet.main(tiny_argv(corpus, other, "--max_epoch", "1", "--nOut", "16")) == 0
    assert averageCheckpoints.main(["--checkpoints", str(first), str(other / "model/model000000001.model"),
                                    "--out", str(tmp_path / "x.model")]) == 2
    assert "different models" in caplog.text and "nOut" in caplog.text
    assert not (tmp_path / "x.model").exists()
    assert first.read_bytes() == before
