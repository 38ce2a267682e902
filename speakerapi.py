"""Speaker verification from Python: embeddings, scores and decisions of a checkpoint or of an export.

    from speakerapi import SpeakerVerifier
    sv = SpeakerVerifier.from_export("exported")            # export.py's folder (ONNX if onnxruntime is there)
    sv = SpeakerVerifier.from_checkpoint("exps/demo/config.yaml", "exps/demo/model/last.model")
    e = sv.embed("a.wav")                                    # (nOut,) float32, as the model outputs it
    E = sv.embed_many(["a.wav", "b.wav"], batch=16)          # (N, nOut)
    speaker = sv.enroll(["a1.wav", "a2.wav"])                # mean of the L2-normalised embeddings
    s = sv.score(speaker, "b.wav")                           # cosine of whole-utterance embeddings
    accept, s = sv.verify("a.wav", "b.wav", threshold=0.5)

Inputs are paths (read as in training; bad files raise AudioError), finite 16 kHz 1-D waveforms of at least
``MIN_SAMPLES``, or, for ``score`` and ``verify``, embeddings of ``embedding_size`` values.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import Config, load_yaml, resolve
from dtdysv.data.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, read_audio
from dtdysv.errors import UserError
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.fileio import read_text
from dtdysv.runtime.setup import build_net, load_weights, pick_device
from SpeakerNet import Embedder

log = logging.getLogger(__name__)
SIDECAR = "export.json"  # export.py writes it beside model.pt / model.onnx

Backend = Callable[[np.ndarray], np.ndarray]  # waves (B, samples) float32 -> embeddings (B, nOut) float32
Input = str | Path | np.ndarray | torch.Tensor


class ApiError(UserError):
    pass


class TorchScriptBackend:
    """A TorchScript export (``model.pt``) run by torch on ``device``."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(waves).to(self.device)).float().cpu().numpy()


class OnnxBackend:
    """An ONNX export run by onnxruntime on the CPU with ``threads`` intra-op threads (0: one per core)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ApiError("Running an ONNX export needs onnxruntime (`pip install onnxruntime`); or load the "
                           "TorchScript export (model.pt).") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        return self.session.run(["embedding"], {"wave": np.ascontiguousarray(waves, dtype=np.float32)})[0]


class EagerBackend:
    """The eager model through an Embedder (eval mode, on its device)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        return self.embedder.embed_waves(torch.from_numpy(waves)).numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (..., D) scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SpeakerVerifier:
    """Embeddings, cosine scores and decisions of one model (``backend``) of ``embedding_size`` outputs."""

    def __init__(self, backend: Backend, embedding_size: int, resample: bool = False,
                 info: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.embedding_size = embedding_size
        self.resample = resample
        self.info = info or {}

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

    @classmethod
    def from_export(cls, path: str | Path, prefer: str = "onnx", device: str = "cpu", resample: bool = False,
                    threads: int = 0) -> SpeakerVerifier:
        """An export.py folder (``prefer`` 'onnx' or 'torchscript') or file beside its export.json."""
        if prefer not in ("onnx", "torchscript"):
            raise ApiError(f"prefer is 'onnx' or 'torchscript', got {prefer!r}.")
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        sidecar = folder / SIDECAR
        if not path.exists() or not sidecar.is_file():
            raise ApiError(f"'{path}' is not an export of export.py: expected a folder (or a file in one) holding "
                           f"{SIDECAR} and model.pt or model.onnx.")
        try:
            info = json.loads(read_text(sidecar, f"Export description '{sidecar}'"))
        except json.JSONDecodeError as err:
            raise ApiError(f"'{sidecar}' is not valid JSON ({err}): the export is damaged; export it again with "
                           f"export.py.") from None
        size = info.get("embedding_size") if isinstance(info, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or not isinstance(size, int) \
                or isinstance(size, bool) or size < 1:
            raise ApiError(f"'{sidecar}' is not export.py's description of an export (a JSON object with "
                           f"'embedding_size' (a positive integer), 'sample_rate' and 'files'): export again with "
                           f"export.py.")
        if info.get("sample_rate") != SAMPLE_RATE:
            raise ApiError(f"'{sidecar}' is for {info.get('sample_rate')} Hz audio; this code reads {SAMPLE_RATE} Hz.")
        files = {fmt: folder / str(name) for fmt, name in info["files"].items()}
        if path.is_dir():
            order = [prefer, *(f for f in ("onnx", "torchscript") if f != prefer)]
            found = [f for f in order if f in files and files[f].is_file()]
            if not found:
                raise ApiError(f"Export folder '{folder}' holds neither model.onnx nor model.pt.")
            fmt = found[0]
            if fmt == "onnx" and "torchscript" in found and not _has_onnxruntime():
                fmt = "torchscript"
        elif path.suffix in (".onnx", ".pt"):
            fmt = "onnx" if path.suffix == ".onnx" else "torchscript"
        else:
            raise ApiError(f"'{path}' is neither an ONNX (.onnx) nor a TorchScript (.pt) export.")
        file = files[fmt] if path.is_dir() else path
        try:
            backend = OnnxBackend(file, threads) if fmt == "onnx" else TorchScriptBackend(file, pick_device(device))
        except UserError:
            raise
        except Exception as err:  # onnxruntime and torch.jit raise their own types for a damaged file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ApiError(f"Cannot load the {fmt} export '{file}': {reason[:300]}. The file is damaged or "
                           f"truncated: export again with export.py.") from None
        log.info("loaded the %s export '%s'", fmt, file)
        return cls(backend, size, resample, {**info, "format": fmt, "description": str(sidecar)})

    # --- embeddings -------------------------------------------------------------------------------------------

    def wave(self, item: Input) -> np.ndarray:
        """A path or 1-D waveform as (samples,) float32 at 16 kHz, checked as training checks audio."""
        if isinstance(item, str | Path):
            if not Path(item).is_file():
                raise AudioError(f"Audio file '{item}' does not exist.")
            wave = read_audio(item, self.resample, min_samples=MIN_SAMPLES)
            name = f"Audio file '{item}'"
        else:
            wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            name = "The waveform"
            if wave.ndim != 1 or wave.dtype.kind != "f":
                raise AudioError(f"{name} must be a 1-D float array of samples in [-1, 1] at {SAMPLE_RATE} Hz (mono; "
                                 f"int16 PCM divided by 32768), got shape {wave.shape} of {wave.dtype}.")
            wave = wave.astype(np.float32)
            if not np.isfinite(wave).all():
                raise AudioError(f"{name} holds NaN or infinite samples.")
        if len(wave) < MIN_SAMPLES:
            raise AudioError(f"{name} has {len(wave)} samples ({len(wave) / SAMPLE_RATE:.3f} s); embedding needs "
                             f"at least {MIN_SAMPLES} ({MIN_SAMPLES / SAMPLE_RATE} s).")
        return wave

    def _run(self, waves: np.ndarray) -> np.ndarray:
        """The backend's embeddings of ``waves`` (B, samples), checked to be (B, embedding_size)."""
        out = self.backend(waves)
        if out.shape != (len(waves), self.embedding_size):
            source = f"'{self.info['description']}'" if "description" in self.info else "its embedding_size"
            raise ApiError(f"The model gives embeddings of shape {tuple(out.shape)} for {len(waves)} waveform(s), "
                           f"but {source} says {self.embedding_size} values each: the model file and its "
                           f"description do not belong together; export (or configure) it again.")
        return out

    def embed(self, item: Input) -> np.ndarray:
        """A path or 1-D waveform -> its whole-utterance embedding (nOut,) float32, as the model outputs it."""
        return self._run(self.wave(item)[None, :])[0]

    def embed_many(self, items: Sequence[Input], batch: int = 16) -> np.ndarray:
        """Paths or waveforms -> (N, nOut) float32; equal lengths batched, never padded."""
        if batch < 1:
            raise ApiError(f"batch must be at least 1, got {batch}.")
        waves = [self.wave(item) for item in items]
        out = np.zeros((len(waves), self.embedding_size), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, wave in enumerate(waves):
            by_length.setdefault(len(wave), []).append(i)
        for members in by_length.values():
            for start in range(0, len(members), batch):
                chunk = members[start:start + batch]
                out[chunk] = self._run(np.stack([waves[i] for i in chunk]))
        return out

    def enroll(self, items: Sequence[Input], batch: int = 16) -> np.ndarray:
        """A speaker model from several utterances: the mean of their L2-normalised embeddings, (nOut,)."""
        if not items:
            raise ApiError("Enrollment needs at least one utterance.")
        return _unit(self.embed_many(items, batch)).mean(axis=0)

    # --- scores -----------------------------------------------------------------------------------------------

    def _embedding(self, item: Input) -> np.ndarray:
        """An embedding as it is (a 1-D array of embedding_size values), else the embedding of a path or waveform."""
        if not isinstance(item, str | Path):
            array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if array.ndim == 1 and len(array) == self.embedding_size:
                return array.astype(np.float32)
        return self.embed(item)

    def score(self, a: Input, b: Input) -> float:
        """Cosine of the embeddings of ``a`` and ``b`` (paths, waveforms or embeddings)."""
        return float(np.dot(_unit(self._embedding(a)), _unit(self._embedding(b))))

    def verify(self, a: Input, b: Input, threshold: float) -> tuple[bool, float]:
        """(same speaker?, score): the score of ``a`` and ``b`` and whether it reaches ``threshold``."""
        s = self.score(a, b)
        return s >= threshold, s


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


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
