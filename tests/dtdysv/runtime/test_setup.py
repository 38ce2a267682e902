"""The shared runtime: DataLoader workers capped at the cores, the Embedder, and the model built for inference."""

import dataclasses
import logging
import os
import warnings

import numpy as np
import pytest
import soundfile
import torch

from config import Config
from dtdysv.errors import UserError
from dtdysv.evaluation import embed as embedding
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime import setup as runtime
from dtdysv.runtime.distributed import DistEnv
from SpeakerNet import Embedder

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(tmp_path, **overrides) -> Config:
    values = {"model": "ResNet34_quarter", "encoder_type": "SAP", "nOut": 8, "n_mels": 16, "trainfunc": "softmax",
              "nClasses": 4, "nPerSpeaker": 1, "eval_frames": 10, "num_eval": 2, "nDataLoaderThread": 0,
              "test_path": str(tmp_path), "save_path": str(tmp_path / "exp"), "device": "cpu"}
    values.update(overrides)
    return Config(**values)


def test_available_cores_is_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert runtime.available_cores() == expected


def test_workers_are_capped_at_the_cores_and_the_cap_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "available_cores", lambda: 3)
    monkeypatch.setattr(runtime, "_capped", set())
    with caplog.at_level(logging.INFO, logger="dtdysv.runtime.setup"):
        assert [runtime.loader_workers(n) for n in (0, 2, 3, 8, 8, 8)] == [0, 2, 3, 3, 3, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "dtdysv.runtime.setup"]
    assert lines == ["--nDataLoaderThread 8: using 3 DataLoader workers, the CPU cores available"]


def test_an_evaluation_loader_with_too_many_workers_warns_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_capped", set())
    rng = np.random.default_rng(0)
    files = [f"{i}.wav" for i in range(2)]
    for name in files:
        soundfile.write(tmp_path / name, 0.1 * rng.standard_normal(4000), 16000)
    cores = runtime.available_cores()
    cfg = tiny_cfg(tmp_path, nDataLoaderThread=cores + 4)
    torch.manual_seed(0)
    embedder = Embedder(runtime.build_net(cfg).model, torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="dtdysv.runtime.setup"):
        warnings.simplefilter("always")
        got = embedding.embed_files(embedder, files, tmp_path, cfg, show_progress=False)
    assert got.shape == (2, 2, 8)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    assert f"--nDataLoaderThread {cores + 4}: using {cores} DataLoader workers" in caplog.text


def test_embedder_embeds_in_eval_mode_as_the_model_does(tmp_path):
    torch.manual_seed(0)
    model = runtime.build_net(tiny_cfg(tmp_path)).model.train()
    embedder = Embedder(model, torch.device("cpu"))
    assert not model.training
    waves = torch.randn(3, 4000)
    with torch.no_grad():
        expected = model(waves)
    got = embedder.embed_waves(waves)
    assert got.dtype == torch.float32 and got.shape == (3, 8)
    torch.testing.assert_close(got, expected)


def test_build_embedder_loads_the_weights_and_refuses_none(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(UserError, match="need weights: give --initial_model"):
        runtime.build_embedder(cfg, torch.device("cpu"), DistEnv())
    torch.manual_seed(1)
    net = runtime.build_net(cfg)
    path = tmp_path / "w.model"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": net.model.state_dict(), "loss": net.loss.state_dict(),
                     "config": cfg.to_dict()}, path)
    embedder, built, used = runtime.build_embedder(dataclasses.replace(cfg, initial_model=str(path)),
                                                   torch.device("cpu"), DistEnv())
    assert used == str(path) and built.model is embedder.model and runtime.test_normalize(built.loss)
    waves = torch.randn(2, 4000)
    torch.testing.assert_close(embedder.embed_waves(waves), net.model.eval()(waves).detach())


def test_the_fast_cpu_path_embeds_as_the_readable_model_and_leaves_it_readable(tmp_path):
    """--fast_cpu_inference: the folded CPU path gives the readable model's embeddings; afterwards every block runs
    its readable forward again (the switch lasts only while embedding)."""
    from models._resnet import BasicBlock

    cfg = tiny_cfg(tmp_path, model="DTDY_ResNet34_quarter")
    torch.manual_seed(0)
    model = runtime.build_net(cfg).model
    for module in model.modules():  # statistics of real activations, as a trained model has
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(4, 6000))
    waves = torch.randn(3, 6000)
    readable = Embedder(model, torch.device("cpu")).embed_waves(waves)
    fast = Embedder(model, torch.device("cpu"), fast_cpu=True).embed_waves(waves)
    torch.testing.assert_close(fast, readable, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fast, readable)  # the folded path ran (it rounds differently)
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, BasicBlock))
