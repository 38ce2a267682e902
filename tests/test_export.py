"""Exports (export.py): every model plugin to TorchScript and ONNX, run by torch and onnxruntime, gives the eager
model's embeddings on lengths and batch sizes other than those it was traced and checked with; no custom operator
reaches a graph; the ONNX front-end equals torchaudio's; exports that would not match are not written."""

import inspect
import json

import numpy as np
import onnx
import pytest
import torch
import torchaudio
from torch import nn

import export
from config import Config
from dtdysv.runtime import plugins
from models._dtdy_cpu import fast_cpu_inference
from models._frontend import log_mel, make_mel_spectrogram
from speakerapi import SpeakerVerifier

CHECK_SECONDS = ((0.9, 1), (1.6, 2))  # (length, batch): not the export's own parity inputs
pytestmark = pytest.mark.usefixtures("one_thread")  # two threads on a busy 2-core machine wait on each other

SMALL = {"nOut": 32, "n_mels": 24, "encoder_type": "SAP"}  # options a plugin does not declare are not passed


def pooling_of(name: str) -> str:
    """SAP where the plugin has it (the ResNets), else the plugin's own default pooling (the baselines)."""
    try:
        plugins.build("model", name, Config(model=name, **{**SMALL, "nOut": 2, "n_mels": 8}))
        return SMALL["encoder_type"]
    except plugins.PluginError:
        return inspect.signature(plugins.load("model", name)).parameters["encoder_type"].default


def small_model(name: str) -> nn.Module:
    """Plugin ``name`` built small, its BatchNorm statistics those of a few noise batches (as after training: a
    model with initial statistics in eval mode has activations of 1e27, useless for comparing numbers)."""
    torch.manual_seed(0)
    model = plugins.build("model", name, Config(model=name, **{**SMALL, "encoder_type": pooling_of(name)}))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        model(0.1 * torch.randn(3, 12000, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def check_waves() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [0.1 * torch.randn(batch, int(seconds * 16000), generator=g) for seconds, batch in CHECK_SECONDS]


@pytest.fixture(scope="module", params=plugins.available("model"))
def exported(request, tmp_path_factory):
    """(plugin name, its small model, the export folder, the sidecar) of every model plugin, both formats."""
    model = small_model(request.param)
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    sidecar = export.export_model(model, out, export.FORMATS, {"embedding_size": SMALL["nOut"]})
    return request.param, model, out, sidecar


@pytest.mark.slow
@pytest.mark.parametrize("fmt", export.FORMATS)
def test_export_gives_the_eager_embeddings(exported, fmt):
    _, model, out, sidecar = exported
    assert sidecar["parity"][fmt]["passed"] and sidecar["parity"][fmt]["embedding_relative_error"] <= 1e-4
    assert json.loads((out / export.SIDECAR).read_text()) == sidecar
    sv = SpeakerVerifier.from_export(out, prefer=fmt, threads=1)
    assert sv.info["format"] == fmt and sv.embedding_size == SMALL["nOut"]
    for wave in check_waves():
        with torch.no_grad():
            eager = model(wave).numpy()
        got = sv.backend(wave.numpy())
        assert got.shape == eager.shape == (wave.shape[0], SMALL["nOut"])
        assert np.abs(eager).max() > 1e-2  # a model whose numbers say something
        np.testing.assert_allclose(got, eager, rtol=0, atol=1e-4 * max(1.0, float(np.abs(eager).max())))


@pytest.mark.slow
def test_graphs_hold_only_standard_operators_and_dynamic_axes(exported):
    _, _, out, sidecar = exported
    graph = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(graph)
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # no custom ('dtdy') operator domain
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [export.DEFAULT_OPSET]
    wave_dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in wave_dims] == [True, True]  # batch and samples are symbolic
    assert "STFT" not in {node.op_type for node in graph.graph.node}  # the DFT convolution front-end
    kinds = {node.kind() for node in torch.jit.load(str(out / "model.pt")).inlined_graph.nodes()}
    assert all(k.split("::")[0] in ("aten", "prim") for k in kinds), sorted(kinds)
    assert sidecar["files"] == {"torchscript": "model.pt", "onnx": "model.onnx"}


@pytest.mark.parametrize("n_mels", [40, 64])
def test_dft_front_end_gives_the_models_features(n_mels):
    """The ONNX front-end's float64 mel power equals the model's to float64 rounding, so both give the same fp32
    features, and those are torchaudio's fp32 features to the rounding of an fp32 FFT."""
    torchfb = make_mel_spectrogram(n_mels)
    dft = export.DftMelSpectrogram(torchfb)
    fp32 = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=400, hop_length=160,
                                                window_fn=torch.hamming_window, n_mels=n_mels)
    g = torch.Generator().manual_seed(3)
    for samples in (400, 11_237, 32_240):
        wave = 0.1 * torch.randn(2, samples, generator=g)
        wave[1, samples // 2:] *= 1e-3  # a fade to -60 dB: small powers, where the log is most sensitive
        expected = torchfb(wave)
        got = dft(wave)
        assert got.dtype == expected.dtype == torch.float64
        assert got.shape == expected.shape == (2, n_mels, 1 + samples // 160)
        assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()
        features = log_mel(torchfb, wave, True)
        assert features.dtype == torch.float32
        assert (log_mel(dft, wave, True) - features).abs().max() <= 1e-6  # an fp32 ulp at most
        assert (log_mel(fp32, wave, True) - features).abs().max() <= 1e-4
        assert (fp32(wave) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_export_refuses_the_cpu_inference_path_and_compiled_models(tmp_path):
    model = small_model("ResNet34_quarter")
    with fast_cpu_inference(model), pytest.raises(export.ExportError, match="fast_cpu_inference"):
        export.export_model(model, tmp_path, ("onnx",), {"embedding_size": 32})
    model.compile()  # compiles lazily, at the first call: nothing runs here
    with pytest.raises(export.ExportError, match="torch.compile"):
        export.export_model(model, tmp_path, ("torchscript",), {"embedding_size": 32})
    assert list(tmp_path.iterdir()) == []


def test_an_export_off_the_eager_model_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "EMBEDDING_TOLERANCE", -1.0)  # no difference passes
    with pytest.raises(export.ExportError, match="differs from the eager model"):
        export.export_model(small_model("ResNet34_quarter"), tmp_path, ("torchscript",), {"embedding_size": 32})
    assert list(tmp_path.iterdir()) == []  # neither the model, nor a temporary, nor the sidecar


def test_bad_formats_and_opsets_are_refused(tmp_path):
    model = small_model("ResNet34_quarter")
    with pytest.raises(export.ExportError, match="valid: torchscript, onnx"):
        export.export_model(model, tmp_path, ("tflite",), {})
    with pytest.raises(export.ExportError, match="opset 12 or newer"):
        export.export_model(model, tmp_path, ("onnx",), {}, opset=11)


def test_a_refused_export_leaves_an_earlier_one_as_it_was(tmp_path, monkeypatch):
    model, out = small_model("ResNet34_quarter"), tmp_path / "exported"
    export.export_model(model, out, export.FORMATS, {"embedding_size": 32})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as patch:
        patch.setattr(export, "SCORE_TOLERANCE", -1.0)
        with pytest.raises(export.ExportError, match="cosine scores of pairs by .*; nothing was written"):
            export.export_model(model, out, ("torchscript",), {"embedding_size": 32})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary folder left
    export.export_model(model, out, ("torchscript",), {"embedding_size": 32})  # a new export replaces the old
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.pt"]
