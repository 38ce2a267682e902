"""What a kill or a changed setting can do to a run: a rerun after a kill at any moment ends with every numbered
checkpoint and the complete evaluation of an uninterrupted run; a resume refuses settings that could not take
effect and records those that do; a trial list that cannot give metrics stops the run before it trains."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

import trainSpeakerNet
from conftest import ROOT
from conftest import tiny_argv as argv
from dtdysv.runtime import checkpoint as ckpt

pytestmark = pytest.mark.slow

# Runs trainSpeakerNet.main with the process killed (os._exit, no cleanup) at one moment of epoch 2.
DRIVER = """
import os, sys
sys.path.insert(0, sys.argv[1])
import trainSpeakerNet
from dtdysv.evaluation import pipeline
from dtdysv.runtime import checkpoint as ckpt
from SpeakerNet import ModelTrainer

moment = sys.argv[2]

def die():
    os._exit(137)

if moment == "training":
    train_network = ModelTrainer.train_network
    def patched(self, loader, epoch, *args, **kwargs):
        if epoch == 2:
            die()
        return train_network(self, loader, epoch, *args, **kwargs)
    ModelTrainer.train_network = patched
elif moment == "between_checkpoints":
    save = ckpt.atomic_save
    def patched(obj, path):
        if str(path).endswith("last.model") and obj.get("epoch") == 2:
            die()
        save(obj, path)
    ckpt.atomic_save = patched
elif moment == "before_evaluation":
    evaluate = trainSpeakerNet.evaluate
    def patched(*args, checkpoint=None, **kwargs):
        if str(checkpoint).endswith("model000000002.model"):
            die()
        return evaluate(*args, checkpoint=checkpoint, **kwargs)
    trainSpeakerNet.evaluate = patched
elif moment == "during_evaluation":
    report = pipeline.score_and_report
    def patched(run, lists):
        if str(run.checkpoint).endswith("model000000002.model"):
            die()
        return report(run, lists)
    pipeline.score_and_report = patched
sys.exit(trainSpeakerNet.main(sys.argv[3:]))
"""

MOMENTS = ("training", "between_checkpoints", "before_evaluation", "during_evaluation")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("uninterrupted")
    assert trainSpeakerNet.main(argv(corpus, save)) == 0
    return save


def metrics_of(save):
    metrics = json.loads((save / "result" / "test_list" / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k != "checkpoint"}, metrics["checkpoint"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_rerun_after_a_kill_finishes_what_the_epoch_owed(corpus, uninterrupted, tmp_path, moment, caplog):
    save = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), moment, *argv(corpus, save)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not metrics_of(save)[1].endswith("model000000002.model")  # the kill left epoch 2 unevaluated
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, save)) == 0
    if moment in ("before_evaluation", "during_evaluation"):
        assert "epoch 2 was saved but not evaluated: evaluating it first" in caplog.text
    assert [p.name for p in ckpt.numbered_checkpoints(save)] == ["model000000001.model", "model000000002.model"]
    last = ckpt.read(save / "model" / "last.model")
    assert (last["epoch"], last["owes_evaluation"]) == (2, False)
    reference = ckpt.read(uninterrupted / "model" / "last.model")
    assert all(torch.equal(reference["model"][k], last["model"][k]) for k in reference["model"])
    metrics, checkpoint = metrics_of(save)
    assert checkpoint.endswith("model000000002.model")
    assert metrics == metrics_of(uninterrupted)[0]
    assert (save / "result" / "test_list" / "det.png").is_file()
    caplog.clear()  # a third run has nothing left to do
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, save)) == 0
    assert "already finished" in caplog.text and "evaluating it first" not in caplog.text


def test_a_resume_refuses_a_changed_learning_rate_and_records_a_longer_run(corpus, tmp_path, caplog):
    save = tmp_path / "run"
    assert trainSpeakerNet.main(argv(corpus, save, "--max_epoch", "1")) == 0
    before = (save / "model" / "last.model").read_bytes()
    caplog.clear()
    assert trainSpeakerNet.main(argv(corpus, save, "--lr", "0.01")) == 2
    assert "lr: checkpoint 0.001, now 0.01" in caplog.text and "--initial_model" in caplog.text
    assert (save / "model" / "last.model").read_bytes() == before
    assert trainSpeakerNet.main(argv(corpus, save, "--batch_size", "2")) == 2
    assert "batch_size: checkpoint 3, now 2" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):  # a longer run and a new crop length take effect, and say so
        assert trainSpeakerNet.main(argv(corpus, save, "--max_frames", "50")) == 0
    assert "resumed with changed settings" in caplog.text and "max_epoch: 1 -> 2" in caplog.text
    assert "max_frames: 40 -> 50" in caplog.text
    written = yaml.safe_load((save / "config.yaml").read_text())
    assert (written["max_epoch"], written["max_frames"]) == (2, 50)
    assert "max_epoch: 1 -> 2" in (save / "result" / "train.log").read_text()


def test_a_trial_list_of_one_class_stops_the_run_before_training(corpus, tmp_path, caplog):
    lines = (corpus / "test_list.txt").read_text().splitlines()
    targets = tmp_path / "targets.txt"
    targets.write_text("\n".join(line for line in lines if line.startswith("1 ")) + "\n")
    save = tmp_path / "run"
    args = [a if a != str(corpus / "test_list.txt") else str(targets) for a in argv(corpus, save)]
    assert trainSpeakerNet.main(args) == 2
    assert f"Trial list '{targets}' has only target (1) trials" in caplog.text
    assert not (save / "model").exists()
    assert trainSpeakerNet.main([*args, "--eval", "--initial_model", "absent.model"]) == 2
