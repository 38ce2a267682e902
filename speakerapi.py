"""Speaker verification from Python in a checkout: the inference API of dtdysv/api.py (exports: embeddings, scores,
calibrated llrs and decisions), plus the eager model of a checkpoint.

    from speakerapi import SpeakerVerifier
    sv = SpeakerVerifier.from_export("exported")            # export.py's folder (ONNX if onnxruntime is there)
    sv = SpeakerVerifier.from_checkpoint("exps/demo/config.yaml", "exps/demo/model/last.model")
    e = sv.embed("a.wav")                                    # (nOut,) float32, as the model outputs it
    accept, llr = sv.verify("a.wav", "b.wav")                # an export with --calibration: llr > Bayes threshold
    accept, s = sv.verify("a.wav", "b.wav", threshold=0.5)   # otherwise: the cosine against a threshold you give

dtdysv/api.py describes inputs, errors and calibrated decisions; it needs no model code, so ``pip install .``
installs it without this checkout. A checkpoint's model (``from_checkpoint``) gives cosine scores only: calibrated
decisions come with an export made with ``export.py --calibration``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from config import Config, load_yaml, resolve
from dtdysv.api import MIN_SAMPLES, SIDECAR, ApiError, Backend, Input, OnnxBackend, TorchScriptBackend
from dtdysv.api import SpeakerVerifier as ExportVerifier
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.setup import build_net, load_weights, pick_device
from SpeakerNet import Embedder

__all__ = ["MIN_SAMPLES", "SIDECAR", "ApiError", "Backend", "EagerBackend", "Input", "OnnxBackend",
           "SpeakerVerifier", "TorchScriptBackend", "config_of"]


class EagerBackend:
    """The eager model through an Embedder (eval mode, on its device)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        return self.embedder.embed_waves(torch.from_numpy(waves)).numpy()


class SpeakerVerifier(ExportVerifier):
    """dtdysv.api's SpeakerVerifier, which also runs the eager model of a checkpoint."""

    @classmethod
    def from_checkpoint(cls, config: str | Path | Config | None, checkpoint: str | Path, device: str = "cpu",
                        resample: bool = False) -> SpeakerVerifier:
        """The eager model of ``config`` (None: the checkpoint's) with ``checkpoint``'s weights."""
        cfg = config_of(config, checkpoint)
        net = build_net(cfg)
        load_weights(net, checkpoint, cfg, with_loss=False)
        dev = pick_device(device)
        embedder = Embedder(net.model.to(dev), dev)
        return cls(EagerBackend(embedder), cfg.nOut, resample, {"checkpoint": str(checkpoint), "model": cfg.model})


def config_of(config: str | Path | Config | None, checkpoint: str | Path) -> Config:
    """``config`` (a Config, or a YAML file), else the config stored in our checkpoint ``checkpoint``."""
    if isinstance(config, Config):
        return config
    if config:
        return resolve(load_yaml(config), yaml_name=f"'{config}'")
    stored = ckpt.read(checkpoint).get("config")
    if not isinstance(stored, dict):
        raise ApiError(f"'{checkpoint}' stores no config (an official checkpoint?): give the config of its model "
                       f"(--config).")
    return resolve(stored, yaml_name=f"the config stored in '{checkpoint}'")
