"""Speaker verification from an export of export.py: embeddings, scores, calibrated log-likelihood ratios and
decisions. It needs the export folder and numpy, torch, scipy and soundfile (onnxruntime to run model.onnx), no model
code: ``pip install .`` installs it (with the ``dtdysv-score`` command), and speakerapi.py re-exports it in a checkout,
where it also runs checkpoints.

    from dtdysv.api import SpeakerVerifier
    sv = SpeakerVerifier.from_export("exported")             # export.py's folder (ONNX if onnxruntime is there)
    e = sv.embed("a.wav")                                    # (nOut,) float32, as the model outputs it
    E = sv.embed_many(["a.wav", "b.wav"], batch=16)          # (N, nOut)
    speaker = sv.enroll(["a1.wav", "a2.wav"])                # mean of the L2-normalised embeddings
    s = sv.score("a.wav", "b.wav")                           # cosine of whole-utterance embeddings
    accept, llr = sv.verify("a.wav", "b.wav")                # an export with --calibration: llr > Bayes threshold
    accept, s = sv.verify("a.wav", "b.wav", threshold=0.5)   # without: the score against a threshold you give

Inputs are paths (read as training reads them: audio.py, 16 kHz mono unless ``resample``), waveforms (1-D float
arrays or tensors at 16 kHz, finite, at least audio.py's ``MIN_SAMPLES``, 0.1 s, as files are) or, for ``score``,
``llr`` and ``verify``, embeddings (1-D arrays of ``embedding_size`` values; a calibrated llr then needs their
durations, ``seconds``). Bad files raise audio.py's AudioError, the errors training gives.

An export made with ``--calibration`` (the result folder of ``--eval --eval_frames 0 --calibration_list``) scores as
that evaluation did: its mean subtraction and score normalisation (``Scoring``), then the calibration model (qmf.py)
maps the score, both durations and both cohort means to an llr, accepted above the Bayes threshold
``log(C_fa (1 - p) / (C_miss p))`` of ``p_target`` (default 0.01, the operating point of VoxSRC and NIST SRE's
minDCF) and the costs ``c_miss``, ``c_fa`` (default 1): 4.60 at the defaults.
The file runs past 300 lines because it is the whole installable API: loading an export, reading audio, embedding,
scoring, normalising and calibrated decisions, with their checks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtdysv.data.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, read_audio
from dtdysv.errors import UserError
from dtdysv.evaluation.asnorm import cohort_statistics, file_vectors, norm_with_statistics
from dtdysv.evaluation.qmf import Calibration, bayes_threshold, quality_features, read_model
from dtdysv.runtime.fileio import read_text

log = logging.getLogger(__name__)

SIDECAR = "export.json"  # export.py writes it beside model.pt / model.onnx
P_TARGET, C_MISS, C_FA = 0.01, 1.0, 1.0  # the decision's default prior and costs

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
    """An ONNX export (``model.onnx``) run by onnxruntime on the CPU with ``threads`` intra-op threads (0:
    onnxruntime's default, one per core)."""

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


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (..., D) scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Scoring:
    """The scoring of an evaluation carried by an export (export.py --calibration): embeddings (N, D) -> the
    evaluation's final scores and their llrs.

    A file's vector is its raw embedding less the training-set ``mean`` (D,) of the raw embeddings (None: no mean
    subtraction), L2-normalised; the score is the cosine of two vectors, AS-normalised (S-normalised when
    ``top_n`` is the cohort's size) against ``cohort`` (M, D), the speakers' vectors, when there is one; the llr is
    the ``calibration`` of the score, both durations and both cohort means (normalise.py, calibrate.py).
    """

    def __init__(self, calibration: Calibration, test_normalize: bool, mean: np.ndarray | None = None,
                 cohort: np.ndarray | None = None, top_n: int | None = None) -> None:
        if (cohort is None) != (top_n is None):
            raise ValueError("a cohort goes with its top_n (and top_n with a cohort)")
        self.calibration = calibration
        self.test_normalize = test_normalize
        self.mean = None if mean is None else torch.from_numpy(np.asarray(mean, dtype=np.float32))
        self.cohort = None if cohort is None else torch.from_numpy(np.asarray(cohort, dtype=np.float32))
        self.top_n = top_n

    def scores(self, enroll: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """The scores (N,) of N trials of embeddings ``enroll`` and ``test`` (N, D), and with a cohort each side's
        cohort mean (N,), which the llr takes in."""
        sides = [file_vectors(torch.from_numpy(np.asarray(e, dtype=np.float32))[:, None, :], self.test_normalize,
                              self.mean) for e in (enroll, test)]  # (N, D) unit vectors each
        scores = (sides[0] * sides[1]).sum(-1).double()  # (N,) cosines
        if self.cohort is None:
            return scores.numpy(), None
        (mean_e, std_e), (mean_t, std_t) = (cohort_statistics(v, self.cohort, self.top_n) for v in sides)  # (N,)
        rows = torch.arange(len(scores))
        normed = norm_with_statistics(scores, torch.cat([mean_e, mean_t]), torch.cat([std_e, std_t]), rows,
                                      rows + len(scores))
        return normed.numpy(), (mean_e.double().numpy(), mean_t.double().numpy())

    def llrs(self, scores: np.ndarray, seconds: tuple[np.ndarray, np.ndarray],
             cohort_means: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """The llrs (N,) of N trials' ``scores`` and ``cohort_means`` (of ``scores``), and the durations in s of
        each side (N,)."""
        return self.calibration.apply(quality_features(scores, seconds, cohort_means))


class SpeakerVerifier:
    """Embeddings, scores and decisions of one model (``backend``) of ``embedding_size`` outputs; with a
    ``scoring`` (a calibrated export), llrs and Bayes decisions at ``p_target``, ``c_miss``, ``c_fa``."""

    def __init__(self, backend: Backend, embedding_size: int, resample: bool = False,
                 info: dict[str, Any] | None = None, scoring: Scoring | None = None, p_target: float = P_TARGET,
                 c_miss: float = C_MISS, c_fa: float = C_FA) -> None:
        self.backend = backend
        self.embedding_size = embedding_size
        self.resample = resample
        self.info = info or {}
        self.scoring = scoring
        try:
            self.threshold = bayes_threshold(p_target, c_miss, c_fa) if scoring is not None else None
        except ValueError as err:
            raise ApiError(f"The decision's prior and costs: {err} (p_target is the prior probability of a target "
                           f"trial, c_miss and c_fa the costs of a miss and of a false alarm).") from None
        self.p_target, self.c_miss, self.c_fa = p_target, c_miss, c_fa

    @classmethod
    def from_export(cls, path: str | Path, prefer: str = "onnx", device: str = "cpu", resample: bool = False,
                    threads: int = 0, p_target: float = P_TARGET, c_miss: float = C_MISS,
                    c_fa: float = C_FA) -> SpeakerVerifier:
        """An export of export.py: its folder (``prefer`` 'onnx' or 'torchscript' where both are there; ONNX
        needs onnxruntime) or one of its files (model.onnx, model.pt, with export.json beside it). ``device``: 'cpu'
        or 'cuda' for TorchScript; ``threads``: onnxruntime's intra-op threads (0: one per core); ``p_target``,
        ``c_miss``, ``c_fa``: the prior and costs of the decisions of a calibrated export."""
        if prefer not in ("onnx", "torchscript"):
            raise ApiError(f"prefer is 'onnx' or 'torchscript', got {prefer!r}.")
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        info = read_sidecar(folder, path)
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
            backend = OnnxBackend(file, threads) if fmt == "onnx" else TorchScriptBackend(file, _device(device))
        except UserError:
            raise
        except Exception as err:  # onnxruntime and torch.jit raise their own types for a damaged file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ApiError(f"Cannot load the {fmt} export '{file}': {reason[:300]}. The file is damaged or "
                           f"truncated: export again with export.py.") from None
        scoring = read_scoring(folder, info)
        log.info("loaded the %s export '%s'%s", fmt, file, " with its calibration" if scoring else "")
        return cls(backend, info["embedding_size"], resample, {**info, "format": fmt, "description":
                                                               str(folder / SIDECAR)}, scoring, p_target, c_miss, c_fa)

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
        """Paths or waveforms -> (N, nOut) float32 in their order; waveforms of equal length run ``batch`` at a time
        (never padded, so each embedding is that of its utterance alone)."""
        return self.embed_with_seconds(items, batch)[0]

    def embed_with_seconds(self, items: Sequence[Input], batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """``embed_many`` and the durations of the items in seconds (N,), which calibrated llrs need."""
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
        return out, np.array([len(w) / SAMPLE_RATE for w in waves], dtype=np.float64)

    def enroll(self, items: Sequence[Input], batch: int = 16) -> np.ndarray:
        """A speaker model from several utterances: the mean of their L2-normalised embeddings, (nOut,)."""
        if not items:
            raise ApiError("Enrollment needs at least one utterance.")
        return _unit(self.embed_many(items, batch)).mean(axis=0)

    # --- scores and decisions ---------------------------------------------------------------------------------

    def _embedding(self, item: Input) -> tuple[np.ndarray, float | None]:
        """(embedding, duration in s): an embedding as it is (a 1-D array of embedding_size values; duration
        None), else the embedding and duration of a path or waveform."""
        if not isinstance(item, str | Path):
            array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if array.ndim == 1 and len(array) == self.embedding_size:
                return array.astype(np.float32), None
        wave = self.wave(item)
        return self._run(wave[None, :])[0], len(wave) / SAMPLE_RATE

    def score_pairs(self, enroll: np.ndarray, test: np.ndarray, seconds: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The scores (N,) of N pairs of embeddings ``enroll`` and ``test`` (N, D) (see ``score``) and, for a
        calibrated export given the durations in s of each side (``seconds``, (N,) each), their llrs (N,); else
        None."""
        if self.scoring is None:
            return (_unit(enroll) * _unit(test)).sum(-1).astype(np.float64), None
        scores, cohort_means = self.scoring.scores(enroll, test)
        if seconds is None:
            return scores, None
        if not all(np.all(np.asarray(side) > 0) for side in seconds):
            raise ApiError(f"Durations must be positive seconds, got {seconds}.")
        return scores, self.scoring.llrs(scores, seconds, cohort_means)

    def decide(self, values: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Decisions (True: same speaker) on ``values``: for a calibrated export llrs, accepted above ``threshold``
        (default the Bayes threshold, ``self.threshold``); otherwise scores, accepted from ``threshold`` on, which
        must then be given."""
        values = np.asarray(values)
        if self.scoring is not None:
            return values > (self.threshold if threshold is None else threshold)
        if threshold is None:
            raise ApiError(f"A decision needs a threshold: {_UNCALIBRATED}")
        return values >= threshold

    def _pair(self, a: Input, b: Input, seconds: tuple[float, float] | None) -> tuple[float, float | None]:
        """(score, llr) of one trial (llr None unless the export is calibrated)."""
        (ea, sa), (eb, sb) = self._embedding(a), self._embedding(b)
        if seconds is not None:
            sa, sb = seconds
        if self.scoring is not None and (sa is None or sb is None):
            raise ApiError("A calibrated llr needs the duration of both sides: give seconds=(enroll s, test s) with "
                           "embeddings (for an enrolled speaker, e.g. its total seconds), or paths or waveforms.")
        durations = None if self.scoring is None else (np.array([sa], np.float64), np.array([sb], np.float64))
        scores, llrs = self.score_pairs(ea[None], eb[None], durations)
        return float(scores[0]), None if llrs is None else float(llrs[0])

    def score(self, a: Input, b: Input) -> float:
        """The score of ``a`` and ``b`` (paths, waveforms or embeddings): the cosine of their whole-utterance
        embeddings; for a calibrated export, the score its evaluation calibrated (after its mean subtraction and
        score normalisation)."""
        (ea, _), (eb, _) = self._embedding(a), self._embedding(b)
        return float(self.score_pairs(ea[None], eb[None])[0][0])

    def llr(self, a: Input, b: Input, seconds: tuple[float, float] | None = None) -> float:
        """The calibrated log-likelihood ratio of ``a`` and ``b`` (same speaker vs not); ``seconds``: the durations
        of the two sides, needed when they are embeddings. Needs an export made with --calibration."""
        if self.scoring is None:
            raise ApiError(f"An llr needs a calibration: {_UNCALIBRATED}")
        return self._pair(a, b, seconds)[1]

    def verify(self, a: Input, b: Input, threshold: float | None = None,
               seconds: tuple[float, float] | None = None) -> tuple[bool, float]:
        """(same speaker?, value). A calibrated export: the llr and whether it exceeds ``threshold`` (default the
        Bayes threshold of p_target, c_miss, c_fa: ``self.threshold``). Without a calibration: the score and whether
        it reaches ``threshold``, which must then be given."""
        if self.scoring is None and threshold is None:
            raise ApiError(f"verify needs a threshold: {_UNCALIBRATED}")
        score, llr = self._pair(a, b, seconds)
        value = score if llr is None else llr
        return bool(self.decide(value, threshold)), value


_UNCALIBRATED = ("this model has no calibration, so its scores are cosines without a meaning of their own. Give "
                 "verify a score threshold (e.g. an eer_threshold in result/<list>/metrics.json of an evaluation with "
                 "--eval_frames 0), or, for llrs and decisions at a prior and costs, evaluate with --eval_frames 0 "
                 "--calibration_list <labelled trials> and export with --calibration <that result folder>.")


def read_sidecar(folder: Path, path: Path) -> dict[str, Any]:
    """export.json of the export ``path`` (a folder, or a file in ``folder``), checked."""
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
    return info


def read_scoring(folder: Path, info: dict[str, Any]) -> Scoring | None:
    """The ``Scoring`` of an export's 'scoring' entry (export.py --calibration), None if it has none."""
    entry = info.get("scoring")
    if entry is None:
        return None
    sidecar = folder / SIDECAR
    try:
        calibration, _ = read_model(folder / entry["calibration"])
        arrays: dict[str, np.ndarray] = {}
        if entry.get("arrays"):
            with np.load(folder / entry["arrays"], allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        mean = arrays["mean"] if entry["mean_subtraction"] else None
        cohort = arrays["cohort"] if entry["score_norm"] != "none" else None
        top_n = int(entry["top_n"]) if cohort is not None else None
        scoring = Scoring(calibration, bool(info.get("test_normalize", True)), mean, cohort, top_n)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ApiError(f"The calibration of the export '{folder}' cannot be read ({type(err).__name__}: {err}); "
                       f"'{sidecar}' names its files. Export again with export.py --calibration.") from None
    size = info["embedding_size"]
    for name, array in (("mean", mean), ("cohort", cohort)):
        if array is not None and array.shape[-1] != size:
            raise ApiError(f"The {name} of the export '{folder}' has {array.shape[-1]} values per vector, its model "
                           f"{size}: the files do not belong together; export again with export.py --calibration.")
    return scoring


def _device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (cuda if there is one)."""
    if device not in ("cpu", "cuda", "auto"):
        raise ApiError(f"device is 'cpu', 'cuda' or 'auto', got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ApiError("device 'cuda': torch sees no CUDA device here; use 'cpu'.")
    return torch.device(device)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
