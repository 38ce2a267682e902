"""End to end through trainSpeakerNet.main: train, evaluate, resume, fine-tune, and refuse bad input."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import trainSpeakerNet
from conftest import ROOT
from conftest import tiny_argv as argv
from dtdysv.runtime import checkpoint as ckpt

pytestmark = pytest.mark.slow  # trains or runs the command end to end


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    save = tmp_path_factory.mktemp("exp")
    assert trainSpeakerNet.main(argv(corpus, save)) == 0
    return save


def test_training_writes_everything(corpus, trained):
    for rel in ("config.yaml", "model/last.model", "model/model000000001.model", "model/model000000002.model",
                "result/train.log", "result/test_list/scores.txt", "result/test_list/metrics.json",
                "result/test_list/det.png"):
        assert (trained / rel).is_file(), rel
    saved = json.loads((trained / "result/test_list/metrics.json").read_text())
    assert saved["checkpoint"] == str(trained / "model/model000000002.model")  # the last evaluation's
    metrics = saved["variants"]["raw"]
    for key in ("eer_percent", "min_dcf_p0.01", "min_dcf_p0.05", "n_trials", "protocol"):
        assert key in metrics
    trials = (corpus / "test_list.txt").read_text().splitlines()
    assert metrics["n_trials"] == len(trials)
    lines = (trained / "result/test_list/scores.txt").read_text().splitlines()
    assert len(lines) == len(trials)
    assert [line.split()[1:] for line in lines] == [t.split() for t in trials]
    score, label, enroll, test = lines[0].split()
    assert label in ("0", "1") and enroll.endswith(".wav") and test.endswith(".wav")
    assert "epoch 2: loss" in (trained / "result/train.log").read_text()
    # the run's clock: "epoch N/M" with the time left after every epoch, the total at the end
    assert re.search(r"epoch 1/2 done: \d+ s so far, ~\d+ s left \(ends ~\d\d:\d\d\)",
                     (trained / "result/train.log").read_text())
    assert re.search(r"epoch 2/2 done: run finished: 2 epochs in \d+ s", (trained / "result/train.log").read_text())
    state = ckpt.read(trained / "model/last.model")
    assert state["epoch"] == 2 and state["config"]["model"] == "ResNet34_quarter"


def test_eval_reproduces_the_last_training_evaluation(corpus, trained, tmp_path):
    before = json.loads((trained / "result/test_list/metrics.json").read_text())
    scores_before = (trained / "result/test_list/scores.txt").read_text()
    out = tmp_path / "eval"
    code = trainSpeakerNet.main(argv(corpus, out, "--eval", "--initial_model",
                                     str(trained / "model/model000000002.model")))
    assert code == 0
    after = json.loads((out / "result/test_list/metrics.json").read_text())
    assert after == before
    assert (out / "result/test_list/scores.txt").read_text() == scores_before
    log = (out / "result/eval.log").read_text()  # a standalone evaluation keeps its log and TensorBoard scalars
    assert "test_list: EER" in log and list((out / "tensorboard").glob("events.out.tfevents.*"))


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
    (["--nClasses", "4"], ["has 6 speakers, 6 classes, but --nClasses is 4"]),
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
    metrics = json.loads((out / "result/unlabeled/metrics.json").read_text())["variants"]["raw"]
    assert "eer_percent" not in metrics and metrics["n_trials"] == len(lines)
    assert all(len(line.split()) == 3 for line in (out / "result/unlabeled/scores.txt").read_text().splitlines())
    assert not (out / "result/unlabeled/det.png").exists()


def test_separate_evaluations_keep_each_list_and_each_variant_of_one_checkpoint(corpus, trained, tmp_path, caplog):
    out = tmp_path / "e"
    epoch = [str(trained / f"model/model00000000{e}.model") for e in (1, 2)]
    assert trainSpeakerNet.main(argv(corpus, out, "--eval", "--initial_model", epoch[1])) == 0
    first = {p.name: p.read_bytes() for p in (out / "result/test_list").iterdir()}
    trials = (corpus / "test_list.txt").read_text().splitlines()
    other = tmp_path / "half.txt"
    other.write_text("\n".join(trials[::2]) + "\n")
    assert trainSpeakerNet.main(argv(corpus, out, "--eval", "--test_list", str(other), "--initial_model",
                                     epoch[1])) == 0
    assert {p.name: p.read_bytes() for p in (out / "result/test_list").iterdir()} == first
    assert json.loads((out / "result/half/metrics.json").read_text())["variants"]["raw"]["n_trials"] == \
        len(trials[::2])
    # another variant of the same checkpoint joins the raw one; then another checkpoint's evaluation drops it
    assert trainSpeakerNet.main(argv(corpus, out, "--eval", "--initial_model", epoch[1], "--score_norm", "asnorm",
                                     "--norm_top_n", "2")) == 0
    both = json.loads((out / "result/test_list/metrics.json").read_text())
    assert list(both["variants"]) == ["raw", "asnorm"]
    assert (out / "result/test_list/scores.txt").read_bytes() == first["scores.txt"]
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, out, "--eval", "--initial_model", epoch[0])) == 0
    older = json.loads((out / "result/test_list/metrics.json").read_text())
    assert list(older["variants"]) == ["raw"] and older["checkpoint"] == epoch[0]
    assert "removed the earlier asnorm scores and figures, which were of other weights" in caplog.text
    assert not (out / "result/test_list/scores.asnorm.txt").exists()
    assert json.loads((out / "result/half/metrics.json").read_text())["checkpoint"] == epoch[1]


def test_tensorboard_scalars_are_written(trained):
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


def run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "trainSpeakerNet.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_mid_epoch_then_rerun_is_bitwise_identical(corpus, trained, tmp_path):
    save = tmp_path / "killed"
    args = argv(corpus, save, "--checkpoint_minutes", "1e-6")  # a checkpoint after every step
    proc = run_cli(args)
    last = save / "model" / "last.model"
    deadline = time.monotonic() + 120
    position = None
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists():
            state = ckpt.read(last)
            if state["step"] > 0:  # inside an epoch
                position = (state["epoch"], state["step"])
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert position is not None, proc.stderr.read().decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    resumed = run_cli(args)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert f"after epoch {position[0]}, step" in err.decode()
    a = ckpt.read(trained / "model/last.model")
    b = ckpt.read(last)
    assert b["epoch"] == 2 and b["step"] == 0
    for part in ("model", "loss"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_mixedprec_trains_in_bf16_on_cpu(corpus, tmp_path, monkeypatch):
    seen = []
    real = torch.nn.Conv2d.forward

    def spy(self, x):
        out = real(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    save = tmp_path / "amp"
    assert trainSpeakerNet.main(argv(corpus, save, "--mixedprec", "--max_epoch", "1")) == 0
    assert torch.bfloat16 in seen
    state = ckpt.read(save / "model/last.model")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(corpus, tmp_path, caplog, monkeypatch):
    from SpeakerNet import SpeakerNet

    save = tmp_path / "nan"
    assert trainSpeakerNet.main(argv(corpus, save, "--max_epoch", "1")) == 0
    before = (save / "model/last.model").read_bytes()
    real = SpeakerNet.forward
    calls = []

    def poisoned(self, data, label):
        loss, acc = real(self, data, label)
        calls.append(1)
        return (loss * float("nan"), acc) if len(calls) == 2 else (loss, acc)

    monkeypatch.setattr(SpeakerNet, "forward", poisoned)
    code = trainSpeakerNet.main(argv(corpus, save))
    assert_refused(code, caplog, "non-finite", "epoch 2, step 2", "last good checkpoint is kept")
    assert (save / "model/last.model").read_bytes() == before


def test_augment_without_musan_is_a_clear_error_before_any_work(corpus, tmp_path, caplog):
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "aug", "--augment", "--musan_path",
                                     str(tmp_path / "no_musan"), "--rir_path", str(tmp_path / "no_rir")))
    assert_refused(code, caplog, "no_musan", "no_rir")
    assert not (tmp_path / "aug" / "model").exists()


def test_speed_perturbation_needs_three_times_the_classes(corpus, tmp_path, caplog):
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "sp", "--speed_perturb"))
    assert_refused(code, caplog, "x 3 speeds of --speed_perturb", "set --nClasses 18")


def test_training_with_augmentation_and_speed_perturbation(corpus, tmp_path):
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    musan, rirs = tmp_path / "musan_split", tmp_path / "simulated_rirs"
    for kind, count in (("noise", 2), ("speech", 8), ("music", 2)):
        for i in range(count):
            path = musan / kind / "src" / f"{i}" / "00000.wav"
            path.parent.mkdir(parents=True)
            soundfile.write(path, rng.uniform(-0.3, 0.3, 16000), 16000, subtype="PCM_16")
    for room in ("smallroom", "mediumroom"):
        path = rirs / room / "Room001" / "Room001-00001.wav"
        path.parent.mkdir(parents=True)
        soundfile.write(path, np.exp(-np.arange(800) / 100) * rng.standard_normal(800) * 0.3, 16000)
    save = tmp_path / "aug"
    code = trainSpeakerNet.main(argv(corpus, save, "--augment", "--musan_path", str(musan), "--rir_path", str(rirs),
                                     "--speed_perturb", "--nClasses", "18", "--max_epoch", "1"))
    assert code == 0
    assert ckpt.read(save / "model/last.model")["loss"]["softmax.fc.weight"].shape[0] == 18


def test_extract_writes_embeddings_of_a_file_list(corpus, trained, tmp_path):
    import numpy as np

    files = sorted({p for line in (corpus / "test_list.txt").read_text().splitlines() for p in line.split()[1:]})
    (tmp_path / "files.txt").write_text("\n".join(files) + "\n")
    out = tmp_path / "emb.npz"
    code = trainSpeakerNet.main(argv(corpus, trained, "--extract", str(tmp_path / "files.txt"), "--extract_out",
                                     str(out)))
    assert code == 0
    data = np.load(out)
    assert data["names"].tolist() == files and data["embeddings"].shape == (len(files), 32)  # one per file
    crops = tmp_path / "crops.npz"  # a trial list, every crop kept: the mean of the crops is the file's vector
    assert trainSpeakerNet.main(argv(corpus, trained, "--extract", str(corpus / "test_list.txt"), "--extract_out",
                                     str(crops), "--extract_crops")) == 0
    per_crop = np.load(crops)
    assert sorted(per_crop["names"].tolist()) == files and per_crop["embeddings"].shape == (len(files), 2, 32)
    order = [per_crop["names"].tolist().index(f) for f in files]
    np.testing.assert_allclose(per_crop["embeddings"][order].mean(1), data["embeddings"], rtol=1e-5, atol=1e-6)


def test_score_from_cache_reproduces_the_evaluation_without_audio(corpus, trained, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    out = tmp_path / "e"
    last = str(trained / "model/last.model")
    assert trainSpeakerNet.main(argv(copy, out, "--eval", "--initial_model", last)) == 0
    before = json.loads((out / "result/test_list/metrics.json").read_text())["variants"]["raw"]
    shutil.rmtree(copy / "test")  # the audio is gone; the cache is enough
    assert trainSpeakerNet.main(argv(copy, out, "--eval", "--score_from_cache", "--initial_model", last)) == 0
    after = json.loads((out / "result/test_list/metrics.json").read_text())["variants"]["raw"]
    assert after["eer_percent"] == before["eer_percent"] and after["n_trials"] == before["n_trials"]


def test_spec_augment_masks_training_features_only(corpus, tmp_path, monkeypatch):
    import augment

    calls = []
    real = augment.spec_augment

    def spy(feats, **kwargs):
        calls.append(feats.shape)
        return real(feats, **kwargs)

    monkeypatch.setattr(trainSpeakerNet, "spec_augment", spy)
    assert trainSpeakerNet.main(argv(corpus, tmp_path / "sa", "--spec_augment", "--max_epoch", "1")) == 0
    steps = ckpt.read(tmp_path / "sa/model/last.model")["scheduler"]["last_epoch"]
    assert len(calls) == 4 and steps == 1 and all(shape[1] == 40 for shape in calls)  # 4 training batches, no eval


def test_compile_compiles_the_embedding_model_in_place(corpus, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__module__))
    save = tmp_path / "compiled"
    assert trainSpeakerNet.main(argv(corpus, save, "--compile", "--max_epoch", "1")) == 0
    assert trainSpeakerNet.main(argv(corpus, save, "--compile", "--eval")) == 0
    assert compiled == ["models.ResNet34_quarter"] * 2  # training, then evaluation; never the loss head
    keys = ckpt.read(save / "model/last.model")["model"]
    assert not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize("device, tuned", [("cpu", 1), ("meta", 0)])
def test_malloc_is_tuned_for_cpu_runs_only(corpus, tmp_path, monkeypatch, caplog, device, tuned):
    calls = []
    monkeypatch.setattr(trainSpeakerNet, "tune_cpu_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(trainSpeakerNet, "pick_device", lambda name: torch.device(device))
    code = trainSpeakerNet.main(argv(corpus, tmp_path / "none", "--eval"))  # no weights: refused after the device
    assert_refused(code, caplog, "need weights")
    assert len(calls) == tuned
