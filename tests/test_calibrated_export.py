"""Calibrated decisions from an export: a demo checkpoint evaluated on whole utterances with AS-norm, mean
subtraction and calibration, exported with that calibration; the API and the scoring command give the evaluation's
llrs for the same files, decide at the Bayes threshold, score both ways round alike, and a calibration that does not
belong to the exported weights or protocol is refused."""

import json
import shutil

import numpy as np
import pytest
import torch

import export
import scoreSpeakers
import trainSpeakerNet
from config import Config
from conftest import tiny_argv
from dtdysv.api import ApiError, SpeakerVerifier
from dtdysv.data.audio import read_audio
from dtdysv.evaluation.qmf import bayes_threshold
from dtdysv.evaluation.results import read_scores
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.setup import build_net

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SETTINGS = {"model": "ResNet34_quarter", "nOut": 32, "n_mels": 24, "encoder_type": "SAP", "trainfunc": "softmaxproto",
            "nClasses": 6}
EVAL = ("--eval", "--eval_frames", "0", "--score_norm", "asnorm", "--norm_top_n", "3", "--mean_subtraction")


@pytest.fixture(scope="module")
def calibrated(corpus, tmp_path_factory):
    """(checkpoint, result folder, export folder): a small model whose BatchNorm statistics come from demo speech,
    evaluated with whole utterances, AS-norm, mean subtraction and a calibration trained on the demo trials, and
    exported (ONNX and TorchScript) with that calibration."""
    root = tmp_path_factory.mktemp("calibrated")
    cfg = Config(**SETTINGS)
    torch.manual_seed(0)
    net = build_net(cfg)
    files = sorted((corpus / "train" / "wav").rglob("*.wav"))[::3]
    with torch.no_grad():
        for m in net.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        net.model.train()
        net.model(torch.stack([torch.from_numpy(read_audio(f)[:16000]) for f in files]))
    net.model.eval()
    path = root / "model.model"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": net.model.state_dict(), "loss": net.loss.state_dict(),
                      "config": cfg.to_dict(), "epoch": 1}, path)
    save = root / "eval"
    assert trainSpeakerNet.main(tiny_argv(corpus, save, "--n_mels", "24", "--initial_model", str(path), *EVAL,
                                          "--calibration_list", str(corpus / "test_list.txt"))) == 0
    out = root / "exported"
    assert export.main(["--initial_model", str(path), "--out", str(out), "--calibration", str(save / "result")]) == 0
    return path, save / "result", out


def test_the_export_carries_the_calibration_mean_and_cohort(calibrated):
    _, result, out = calibrated
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "export.json", "model.onnx", "model.pt",
                                                     "scoring.npz"]
    info = json.loads((out / "export.json").read_text())
    assert info["scoring"]["score_norm"] == "asnorm" and info["scoring"]["top_n"] == 3
    assert info["scoring"]["mean_subtraction"] is True and info["scoring"]["protocol"] == "whole"
    assert (out / "calibration.json").read_text() == (result / "calibration.json").read_text()
    with np.load(out / "scoring.npz") as arrays:
        assert arrays["mean"].shape == (32,) and arrays["cohort"].shape == (6, 32)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_the_api_gives_the_evaluation_llrs_and_bayes_decisions(corpus, calibrated, fmt):
    _, result, out = calibrated
    expected = read_scores(result / "test_list" / "scores.cal.txt")
    sv = SpeakerVerifier.from_export(out, prefer=fmt, threads=1)
    assert sv.threshold == pytest.approx(bayes_threshold(0.01)) == pytest.approx(np.log(99))
    wav = corpus / "test" / "wav"
    llrs = np.array([sv.llr(wav / e, wav / t) for e, t in zip(expected.enroll, expected.test, strict=True)])
    np.testing.assert_allclose(llrs, expected.scores, atol=1e-4)
    assert llrs.std() > 0.1  # llrs that say something
    normalised = read_scores(result / "test_list" / "scores.asnorm.txt")
    assert sv.score(wav / expected.enroll[0], wav / expected.test[0]) == pytest.approx(normalised.scores[0], abs=1e-4)
    # the Bayes decision at the prior and costs asked for, both ways round alike
    even = SpeakerVerifier.from_export(out, prefer=fmt, threads=1, p_target=0.5)
    assert even.threshold == 0.0
    for (e, t), llr in zip(zip(expected.enroll, expected.test, strict=True), llrs, strict=True):
        assert even.verify(wav / e, wav / t) == (llr > 0, pytest.approx(llr, abs=1e-6))
        assert even.llr(wav / t, wav / e) == pytest.approx(llr, abs=1e-5)
    assert {bool(llr > 0) for llr in llrs} == {True, False}  # both decisions are made
    assert sv.verify(wav / expected.enroll[0], wav / expected.test[0], threshold=-1e9)[0] is True
    # embeddings need their durations
    a, b = (sv.embed(wav / f) for f in (expected.enroll[0], expected.test[0]))
    with pytest.raises(ApiError, match="needs the duration of both sides"):
        sv.llr(a, b)
    seconds = tuple(len(read_audio(wav / f)) / 16000 for f in (expected.enroll[0], expected.test[0]))
    assert sv.llr(a, b, seconds=seconds) == pytest.approx(llrs[0], abs=1e-6)


def test_the_scoring_command_writes_llrs_and_decisions(corpus, calibrated, capsys):
    _, result, out = calibrated
    expected = read_scores(result / "test_list" / "scores.cal.txt")
    wav = corpus / "test" / "wav"
    pairs = [arg for e, t in zip(expected.enroll[:3], expected.test[:3], strict=True)
             for arg in ("--pairs", str(wav / e), str(wav / t))]
    assert scoreSpeakers.main(["--model", str(out), "--p_target", "0.5", *pairs]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [line[2:] for line in lines] == [[str(wav / e), str(wav / t)] for e, t in
                                            zip(expected.enroll[:3], expected.test[:3], strict=True)]
    np.testing.assert_allclose([float(line[0]) for line in lines], expected.scores[:3], atol=1e-4)
    assert [line[1] for line in lines] == ["accept" if s > 0 else "reject" for s in expected.scores[:3]]


def test_without_a_calibration_a_decision_needs_a_threshold(corpus, calibrated, tmp_path):
    path, _, _ = calibrated
    plain = tmp_path / "plain"
    assert export.main(["--initial_model", str(path), "--out", str(plain), "--format", "torchscript"]) == 0
    sv = SpeakerVerifier.from_export(plain)
    files = sorted((corpus / "test" / "wav").rglob("*.wav"))[:2]
    with pytest.raises(ApiError, match="verify needs a threshold.*export with --calibration"):
        sv.verify(*files)
    with pytest.raises(ApiError, match="An llr needs a calibration"):
        sv.llr(*files)
    score = sv.score(*files)
    assert sv.verify(*files, threshold=score - 1e-6) == (True, pytest.approx(score))


def test_a_calibration_of_other_weights_or_protocol_is_refused(calibrated, tmp_path):
    path, result, _ = calibrated
    for change, message in (({"model_fingerprint": "0" * 40}, "trained on the scores of other weights"),
                            ({"settings": {"protocol": "paper"}}, "scores of the 'paper' protocol")):
        folder = tmp_path / next(iter(change))
        shutil.copytree(result, folder)
        model = json.loads((folder / "calibration.json").read_text())
        model.update({k: {**model[k], **v} if isinstance(v, dict) else v for k, v in change.items()})
        (folder / "calibration.json").write_text(json.dumps(model))
        out = tmp_path / f"out_{next(iter(change))}"
        with pytest.raises(export.ExportError, match=message):
            export.export_checkpoint(None, path, out, export.FORMATS, calibration=folder)
        assert not out.exists()
    (tmp_path / "no_cohort").mkdir()
    shutil.copy(result / "calibration.json", tmp_path / "no_cohort")
    with pytest.raises(export.ExportError, match="need the cohort, but .*cohort.npz' does not exist"):
        export.export_checkpoint(None, path, tmp_path / "out", export.FORMATS, calibration=tmp_path / "no_cohort")
    with pytest.raises(export.ExportError, match="no calibration model there"):
        export.export_checkpoint(None, path, tmp_path / "out", export.FORMATS, calibration=tmp_path)
    assert not (tmp_path / "out").exists()
