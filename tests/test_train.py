"""End to end through trainSpeakerNet.main: train, evaluate, resume, fine-tune, and refuse bad input."""

import json

import pytest
import torch

import checkpoint as ckpt
import trainSpeakerNet
from demodata import make_demo_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_corpus(root, n_train_speakers=6, n_test_speakers=3, utts_per_speaker=4, test_utts_per_speaker=2,
                     videos_per_speaker=2, n_trials=12, min_seconds=1.0, max_seconds=1.2, seed=1)
    return root


def argv(corpus, save, *extra):
    """A tiny but complete configuration: short crops, small batches, no workers."""
    return ["--model", "ResNet34_quarter", "--encoder_type", "SAP", "--nOut", "32", "--n_mels", "40",
            "--trainfunc", "softmaxproto", "--nClasses", "6", "--batch_size", "3", "--nPerSpeaker", "2",
            "--max_frames", "40", "--eval_frames", "60", "--num_eval", "2", "--max_epoch", "2",
            "--test_interval", "1", "--nDataLoaderThread", "0", "--seed", "5", "--lr", "0.001",
            "--train_list", str(corpus / "train_list.txt"), "--train_path", str(corpus / "train" / "wav"),
            "--test_list", str(corpus / "test_list.txt"), "--test_path", str(corpus / "test" / "wav"),
            "--save_path", str(save), *extra]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("exp")
    assert trainSpeakerNet.main(argv(corpus, save)) == 0
    return save


def test_training_writes_everything(corpus, trained):
    for rel in ("config.yaml", "model/last.model", "model/model000000001.model", "model/model000000002.model",
                "result/train.log", "result/scores.txt", "result/metrics.json"):
        assert (trained / rel).is_file(), rel
    metrics = json.loads((trained / "result/metrics.json").read_text())
    for key in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "protocol"):
        assert key in metrics
    trials = (corpus / "test_list.txt").read_text().splitlines()
    assert metrics["n_trials"] == len(trials)
    lines = (trained / "result/scores.txt").read_text().splitlines()
    assert len(lines) == len(trials)
    assert [line.split()[1:] for line in lines] == [t.split() for t in trials]
    score, label, enroll, test = lines[0].split()
    assert label in ("0", "1") and enroll.endswith(".wav") and test.endswith(".wav")
    assert "epoch 2: loss" in (trained / "result/train.log").read_text()
    state = ckpt.read(trained / "model/last.model")
    assert state["epoch"] == 2 and state["config"]["model"] == "ResNet34_quarter"


def test_eval_reproduces_the_last_training_evaluation(corpus, trained, tmp_path):
    before = json.loads((trained / "result/metrics.json").read_text())
    scores_before = (trained / "result/scores.txt").read_text()
    out = tmp_path / "eval"
    code = trainSpeakerNet.main(argv(corpus, out, "--eval", "--initial_model",
                                     str(trained / "model/model000000002.model")))
    assert code == 0
    after = json.loads((out / "result/metrics.json").read_text())
    assert after == before
    assert (out / "result/scores.txt").read_text() == scores_before


def test_eval_without_initial_model_uses_the_latest_checkpoint(corpus, trained):
    assert trainSpeakerNet.main(argv(corpus, trained, "--eval")) == 0


def test_resume_continues_at_the_next_epoch_and_matches_an_uninterrupted_run(corpus, trained, tmp_path, caplog):
    save = tmp_path / "resumed"
    assert trainSpeakerNet.main(argv(corpus, save, "--max_epoch", "1")) == 0  # as if killed after epoch 1
    caplog.clear()
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, save)) == 0
    assert "after epoch 1" in caplog.text and "epoch 2: loss" in caplog.text and "epoch 1: loss" not in caplog.text
    a = ckpt.read(trained / "model/last.model")["model"]
    b = ckpt.read(save / "model/last.model")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_does_nothing_more(corpus, trained, caplog):
    before = (trained / "model/last.model").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, trained)) == 0
    assert "already finished" in caplog.text
    assert (trained / "model/last.model").stat().st_mtime_ns == before


def test_initial_model_fine_tunes_from_weights(corpus, trained, tmp_path, caplog):
    with caplog.at_level("INFO"):
        code = trainSpeakerNet.main(argv(corpus, tmp_path / "ft", "--max_epoch", "1", "--initial_model",
                                         str(trained / "model/last.model")))
    assert code == 0 and "loaded weights from" in caplog.text


def assert_refused(code, caplog, *fragments):
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_mismatched_checkpoint_is_refused_and_left_intact(corpus, trained, caplog):
    files = {p: p.read_bytes() for p in (trained / "model").iterdir()}
    files[trained / "config.yaml"] = (trained / "config.yaml").read_bytes()
    code = trainSpeakerNet.main(argv(corpus, trained, "--model", "ResNet34_half", "--nOut", "64"))
    assert_refused(code, caplog, "other settings", "model: checkpoint 'ResNet34_quarter', now 'ResNet34_half'",
                   "nOut: checkpoint 32, now 64")
    assert {p: p.read_bytes() for p in files} == files


def test_initial_model_of_another_model_is_refused(corpus, trained, tmp_path, caplog):
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "x", "--eval", "--encoder_type", "ASP", "--initial_model",
                                     str(trained / "model/last.model")))
    assert_refused(code, caplog, "encoder_type: checkpoint 'SAP', now 'ASP'")


@pytest.mark.parametrize("extra, fragments", [
    (["--max_frame", "40"], ["Unknown option '--max_frame'", "did you mean '--max_frames'"]),
    (["--batch_size", "three"], ["'batch_size'", "expects int", "'three'"]),
    (["--model", "ResNet99"], ["Unknown model 'ResNet99' (--model)", "DTDY_ResNet34_half"]),
    (["--trainfunc", "arcface"], ["Unknown loss 'arcface' (--trainfunc)", "aamsoftmax"]),
    (["--trainfunc", "angleproto", "--nPerSpeaker", "1"], ["needs --nPerSpeaker 2"]),
    (["--nClasses", "4"], ["has 6 speakers but --nClasses is 4"]),
])
def test_bad_options_are_one_clear_error(corpus, tmp_path, caplog, extra, fragments):
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "bad", *extra))
    assert_refused(code, caplog, *fragments)
    assert not (tmp_path / "bad" / "model").exists()


def test_missing_list_file_is_one_clear_error(corpus, tmp_path, caplog):
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "bad", "--train_list", str(tmp_path / "missing.txt")))
    assert_refused(code, caplog, "missing.txt", "(--train_list) does not exist")


def test_unlabeled_trial_list_gives_scores_and_no_metrics(corpus, trained, tmp_path):
    lines = (corpus / "test_list.txt").read_text().splitlines()
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("".join(" ".join(line.split()[1:]) + "\n" for line in lines))
    out = tmp_path / "u"
    code = trainSpeakerNet.main(argv(corpus, out, "--eval", "--test_list", str(unlabeled), "--initial_model",
                                     str(trained / "model/last.model")))
    assert code == 0
    metrics = json.loads((out / "result/metrics.json").read_text())
    assert "eer_percent" not in metrics and metrics["n_trials"] == len(lines)
    assert all(len(line.split()) == 3 for line in (out / "result/scores.txt").read_text().splitlines())
