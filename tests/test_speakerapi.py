"""The inference API (speakerapi.py), export.py's command line and the scoring command line (scoreSpeakers.py) on
demo-corpus utterances: the exports give the eager model's scores, enrollment and batching are what they say, and
bad input is refused with the errors training gives."""

import json
import logging

import numpy as np
import pytest
import soundfile
import torch

import export
import scoreSpeakers
from config import Config
from dtdysv.data.audio import AudioError, read_audio
from dtdysv.data.lists import DataError
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.setup import build_net
from speakerapi import MIN_SAMPLES, ApiError, SpeakerVerifier

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"model": "ResNet34_quarter", "nOut": 32, "n_mels": 24, "encoder_type": "SAP", "trainfunc": "softmaxproto",
            "nClasses": 6}


@pytest.fixture(scope="module")
def demo(corpus, tmp_path_factory):
    """(checkpoint, export folder, the eager model, demo test files): a checkpoint of a small model whose
    BatchNorm statistics come from demo speech, exported by export.py's command line."""
    root = tmp_path_factory.mktemp("api")
    cfg = Config(**SETTINGS)
    torch.manual_seed(0)
    net = build_net(cfg)
    files = sorted((corpus / "test" / "wav").rglob("*.wav"))
    with torch.no_grad():
        for m in net.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        net.model.train()
        net.model(torch.stack([torch.from_numpy(read_audio(f)[:16000]) for f in files[:4]]))
    net.model.eval()
    path = root / "model.model"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": net.model.state_dict(), "loss": net.loss.state_dict(),
                      "config": cfg.to_dict(), "epoch": 1}, path)
    out = root / "exported"
    assert export.main(["--initial_model", str(path), "--out", str(out)]) == 0
    return path, out, net.model, [str(f) for f in files]


def eager_embedding(model, path):
    with torch.no_grad():
        return model(torch.from_numpy(read_audio(path))[None])[0].numpy()


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_export_cli_writes_the_sidecar(demo):
    path, out, _, _ = demo
    info = json.loads((out / "export.json").read_text())
    assert info["checkpoint"] == str(path.resolve()) and info["embedding_size"] == 32 and info["sample_rate"] == 16000
    assert info["model_settings"] == {"model": "ResNet34_quarter", "encoder_type": "SAP", "n_mels": 24,
                                      "log_input": True, "nOut": 32}
    assert info["test_normalize"] is True and info["parity"]["onnx"]["opset"] == export.DEFAULT_OPSET
    assert all(info["parity"][f]["passed"] for f in export.FORMATS)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.pt"]


@pytest.fixture(scope="module")
def verifiers(demo):
    path, out, _, _ = demo
    return {"eager": SpeakerVerifier.from_checkpoint(None, path),
            "onnx": SpeakerVerifier.from_export(out, threads=1),
            "torchscript": SpeakerVerifier.from_export(out / "model.pt")}


def test_every_backend_gives_the_eager_scores(demo, verifiers):
    _, _, model, files = demo
    assert verifiers["onnx"].info["format"] == "onnx" and verifiers["torchscript"].info["format"] == "torchscript"
    pairs = [(files[0], files[1]), (files[0], files[2]), (files[3], files[4])]
    for a, b in pairs:
        expected = cosine(eager_embedding(model, a), eager_embedding(model, b))
        for name, sv in verifiers.items():
            assert sv.score(a, b) == pytest.approx(expected, abs=1e-4), name
            assert sv.verify(a, b, expected - 1e-3) == (True, pytest.approx(expected, abs=1e-4))
            assert sv.verify(a, b, expected + 1e-3)[0] is False
    np.testing.assert_allclose(verifiers["onnx"].embed(files[0]), eager_embedding(model, files[0]), atol=1e-4)


def test_batches_enrollment_and_array_inputs(demo, verifiers):
    _, _, model, files = demo
    sv = verifiers["onnx"]
    chosen = [files[0], files[1], files[0], files[2], files[0]]  # repeated files: equal lengths batched together
    together = sv.embed_many(chosen, batch=2)
    alone = np.stack([eager_embedding(model, f) for f in chosen])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    speaker = sv.enroll(files[:3])
    unit = alone[[0, 1, 3]] / np.linalg.norm(alone[[0, 1, 3]], axis=1, keepdims=True)
    np.testing.assert_allclose(speaker, unit.mean(axis=0), atol=1e-4)
    wave = read_audio(files[4])
    expected = cosine(unit.mean(axis=0), eager_embedding(model, files[4]))
    assert sv.score(speaker, wave) == pytest.approx(expected, abs=1e-4)  # an embedding against a waveform
    assert sv.score(torch.from_numpy(wave), files[4]) == pytest.approx(1.0, abs=1e-5)


def test_cli_scores_pairs_folders_and_wav_scp(demo, verifiers, tmp_path, capsys):
    _, out, _, files = demo
    sv = verifiers["onnx"]
    assert scoreSpeakers.main(["--model", str(out), "--pairs", files[0], files[1], "--pairs", files[0],
                               files[2]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in lines] == [[files[0], files[1]], [files[0], files[2]]]
    assert float(lines[1].split()[0]) == pytest.approx(sv.score(files[0], files[2]), abs=1e-5)

    folder = tmp_path / "clips"
    for i, f in enumerate(files[:3]):
        (folder / f"s{i}").mkdir(parents=True)
        (folder / f"s{i}" / "a.wav").symlink_to(f)
    assert scoreSpeakers.main(["--initial_model", str(demo[0]), "--folder", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:] for line in lines] == [["s0/a.wav", "s1/a.wav"], ["s0/a.wav", "s2/a.wav"],
                                                    ["s1/a.wav", "s2/a.wav"]]
    assert float(lines[2].split()[0]) == pytest.approx(sv.score(files[1], files[2]), abs=1e-4)
    assert scoreSpeakers.main(["--model", str(out), "--folder", str(folder), "--enroll", files[3], files[4],
                               "--enroll_name", "spk"]) == 0
    lines = capsys.readouterr().out.splitlines()
    speaker = sv.enroll(files[3:5])
    assert lines[0].split()[1:] == ["spk", "s0/a.wav"]
    assert float(lines[0].split()[0]) == pytest.approx(sv.score(speaker, files[0]), abs=1e-5)

    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"u{i} {f}\n" for i, f in enumerate(files[:3])))
    trials = tmp_path / "pairs.txt"
    trials.write_text("1 u2 u0\nu1 u2\n")
    result = tmp_path / "scores.txt"
    assert scoreSpeakers.main(["--model", str(out), "--format", "torchscript", "--wav_scp", str(scp),
                               "--pairs_file", str(trials), "--out", str(result)]) == 0
    lines = result.read_text().splitlines()
    assert [line.split()[1:] for line in lines] == [["u2", "u0"], ["u1", "u2"]]
    assert float(lines[0].split()[0]) == pytest.approx(sv.score(files[2], files[0]), abs=1e-5)
    assert scoreSpeakers.main(["--model", str(out), "--wav_scp", str(scp)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # every pair


def bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    rng = np.random.default_rng(0)
    if kind == "wrong_rate":
        soundfile.write(path, rng.uniform(-0.5, 0.5, 8000), 8000, subtype="PCM_16")
    elif kind == "stereo":
        soundfile.write(path, rng.uniform(-0.5, 0.5, (16000, 2)), 16000, subtype="PCM_16")
    elif kind == "empty":
        soundfile.write(path, np.zeros(0), 16000, subtype="PCM_16")
    elif kind == "not_audio":
        path.write_text("this is not audio\n")
    return path


@pytest.mark.parametrize("kind, message", [("missing", "does not exist"), ("wrong_rate", "8000 Hz with 1 channel"),
                                           ("stereo", "16000 Hz with 2 channel"), ("empty", "is empty"),
                                           ("not_audio", "Cannot decode audio file")])
def test_bad_audio_is_refused_as_training_refuses_it(demo, verifiers, tmp_path, caplog, kind, message):
    _, out, _, files = demo
    path = bad_file(tmp_path, kind)
    with pytest.raises(AudioError, match=message) as err:
        verifiers["onnx"].embed(path)
    assert str(path) in str(err.value)
    if kind != "missing":  # the very error of the training and evaluation reader
        with pytest.raises(AudioError) as training:
            read_audio(path)
        assert str(err.value) == str(training.value)
    with caplog.at_level(logging.ERROR):
        assert scoreSpeakers.main(["--model", str(out), "--pairs", files[0], str(path)]) == 2
    assert str(err.value) in caplog.text


def test_bad_arrays_lists_and_exports_are_refused(demo, verifiers, tmp_path):
    _, out, _, files = demo
    sv = verifiers["onnx"]
    with pytest.raises(AudioError, match=f"at least {MIN_SAMPLES}"):
        sv.embed(np.zeros(100, dtype=np.float32))
    with pytest.raises(AudioError, match=r"1-D float array .* got shape \(2, 16000\)"):
        sv.embed(np.zeros((2, 16000), dtype=np.float32))
    with pytest.raises(AudioError, match="1-D float array"):
        sv.embed(np.zeros(16000, dtype=np.int16))
    with pytest.raises(AudioError, match="NaN"):
        sv.embed(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(ApiError, match="at least one"):
        sv.enroll([])
    with pytest.raises(ApiError, match="not an export"):
        SpeakerVerifier.from_export(tmp_path)
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u0 {files[0]}\nu1 sox {files[1]} -t wav - |\nu0 {files[2]}\n")
    with pytest.raises(DataError, match=r"(?s)2 malformed lines in .*wav.scp.*line 2: .*line 3: utterance id 'u0'"):
        scoreSpeakers.read_wav_scp(scp)
    scp.write_text(f"u0 {files[0]}\nu1 {tmp_path / 'gone.wav'}\n")
    with pytest.raises(DataError, match=r"line 2: .*gone.wav"):
        scoreSpeakers.read_wav_scp(scp)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("u0 u1\nu0 u9\n")
    with pytest.raises(DataError, match=r"line 2: u9 not in --wav_scp"):
        scoreSpeakers.read_pairs_file(pairs, {"u0": files[0], "u1": files[1]})
    assert scoreSpeakers.main(["--model", str(out), "--initial_model", str(demo[0]), "--pairs", "a", "b"]) == 2
    assert scoreSpeakers.main(["--model", str(out)]) == 2
