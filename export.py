#!/usr/bin/env python
"""Export a model to TorchScript and ONNX, with a parity check against the eager model, and optionally the
calibration of an evaluation.

    python export.py --config exps/demo/config.yaml --initial_model exps/demo/model/last.model --out exported
    python export.py --initial_model exps/demo/model/last.model --format onnx --opset 17 --out exported
    python export.py --initial_model exps/demo/model/last.model --out exported --calibration exps/demo_cal/result

writes ``model.pt`` (TorchScript), ``model.onnx`` and ``export.json`` (model settings, sample rate, embedding size,
test_normalize, the source checkpoint and its weights' fingerprint, the parity results and their limits) into
``--out``. Both graphs take the waveform ``wave`` (B, samples) float32 at 16 kHz and return ``embedding`` (B, nOut);
batch and time axes are dynamic, and the mel front-end is inside the graph.

- The export runs the readable model on the CPU in eval mode: never under ``fast_cpu_inference``
  (models/_dtdy_cpu.py), never compiled, so no custom operator reaches a graph.
- TorchScript is a trace of the eager model (``torch.jit.trace``); the models have no data-dependent control flow.
- ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs no onnxscript, exports a ResNet-34 in
  seconds, and keeps the batch and time axes symbolic. It cannot export the complex STFT of the model's
  front-end, so the ONNX graph computes the same float64 power mel spectrogram with a windowed DFT basis
  (``DftMelSpectrogram``): the fp32 features equal the eager model's, and only the network's own layers round
  differently. The trained model is not changed.
- Parity is judged by what users consume: each exported file is run (TorchScript by torch, ONNX by onnxruntime) on
  the waveforms of ``parity_waves`` and compared with the eager model by the relative error of each embedding,
  ||export - eager|| / ||eager||, and the difference of the cosine score of each pair of them; above
  ``EMBEDDING_TOLERANCE`` or ``SCORE_TOLERANCE`` the export is refused. Everything is written to a temporary folder
  and moved into ``--out`` only when every format passed, so a refused export leaves no file.
- ``--calibration`` (the result folder of ``trainSpeakerNet.py --eval --eval_frames 0 --calibration_list ...`` for
  these weights, or its calibration.json) carries the calibration model into the export, with ``scoring.npz``: the
  training-set mean (``--mean_subtraction``) and the cohort's speaker vectors (``--score_norm``) when the
  calibration was trained with them. dtdysv/api.py then gives that evaluation's scores, llrs and Bayes decisions.
The file runs past 300 lines because the export, its ONNX front-end and its parity check are one command.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from config import MODEL_KEYS
from dtdysv.api import SIDECAR, Backend, OnnxBackend, TorchScriptBackend
from dtdysv.data.audio import SAMPLE_RATE
from dtdysv.errors import UserError
from dtdysv.evaluation.asnorm import raw_mean, speaker_vectors
from dtdysv.evaluation.qmf import read_model
from dtdysv.evaluation.results import CALIBRATION_FILE, COHORT_ARRAYS, COHORT_FILE, load_npz, weights_fingerprint
from dtdysv.runtime.setup import build_net, load_weights, setup_logging, test_normalize
from speakerapi import config_of

log = logging.getLogger("export")

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
SCORING_ARRAYS = "scoring.npz"  # the mean and cohort of a calibrated export
EXPORT_FILES = (*FILES.values(), CALIBRATION_FILE, SCORING_ARRAYS, SIDECAR)
DEFAULT_OPSET = 17
MIN_OPSET = 12  # Einsum (the DTDY mixing) and reflect padding
PARITY_SECONDS = (0.7, 1.3, 2.0)
EMBEDDING_TOLERANCE = 1e-4  # largest ||export - eager|| / ||eager|| of an embedding
SCORE_TOLERANCE = 1e-4  # largest |cosine(export) - cosine(eager)| of a pair


class ExportError(UserError):
    pass


class DftMelSpectrogram(nn.Module):
    """The front-end's float64 power mel spectrogram (``MelSpectrogram64``: centred, reflect-padded STFT) in
    operators ONNX Runtime runs: frames cut by a float32 convolution with the identity (exact copies of the samples),
    then in float64 their DFT as two matrix products with the windowed cosine and sine bases, the power and the
    filterbank.

    wave (B, samples) -> mel power (B, n_mels, 1 + samples // hop) float64, equal to ``torchfb(wave)`` to float64
    rounding, so that the fp32 features of the two agree. Buffers: ``frame`` (n_fft, 1, n_fft) the identity,
    ``cos`` and ``sin`` (n_fft, K) window * cos and window * sin of the K = n_fft // 2 + 1 bins (the phase from
    exact integer products), ``fb`` (K, n_mels) the filterbank of ``torchfb``.
    """

    def __init__(self, torchfb: torchaudio.transforms.MelSpectrogram) -> None:
        super().__init__()
        spec = torchfb.spectrogram
        if not (spec.center and spec.pad_mode == "reflect" and spec.power == 2.0 and spec.onesided
                and not spec.normalized):
            raise ExportError("The export front-end computes a centred, reflect-padded, one-sided power spectrogram "
                              "without normalisation; this model's torchfb differs.")
        n_fft, window = spec.n_fft, spec.window.double()
        left = (n_fft - window.numel()) // 2
        window = F.pad(window, (left, n_fft - window.numel() - left))  # centred in n_fft, as torch.stft pads it
        n = torch.arange(n_fft, dtype=torch.float64)[:, None]
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[None, :]
        angle = 2 * torch.pi * ((k * n) % n_fft) / n_fft  # (n_fft, K)
        self.register_buffer("frame", torch.eye(n_fft).unsqueeze(1))
        self.register_buffer("cos", window[:, None] * torch.cos(angle))
        self.register_buffer("sin", window[:, None] * torch.sin(angle))
        self.register_buffer("fb", torchfb.mel_scale.fb.detach().double().clone())
        self.hop, self.pad = spec.hop_length, n_fft // 2

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = F.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect")  # (B, 1, samples + n_fft)
        frames = F.conv1d(x, self.frame, stride=self.hop).double().transpose(1, 2)  # (B, frames, n_fft)
        real, imag = frames @ self.cos, frames @ self.sin  # (B, frames, K)
        return ((real * real + imag * imag) @ self.fb).transpose(1, 2)  # (B, n_mels, frames)


def readable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode on the CPU, refused if it runs the CPU inference path or is compiled."""
    patched = [name for name, m in model.named_modules() if "forward" in vars(m)]
    compiled = hasattr(model, "_orig_mod") or any(getattr(m, "_compiled_call_impl", None) is not None
                                                  for m in model.modules())
    if patched or compiled:
        raise ExportError("Export runs the readable model: leave `fast_cpu_inference` (models/_dtdy_cpu.py) and do "
                          "not torch.compile the model before exporting" +
                          (f" (patched forward in {', '.join(patched[:3]) or 'the model'})." if patched else "."))
    return copy.deepcopy(model).cpu().eval()


def onnx_ready(model: nn.Module) -> nn.Module:
    """A readable copy whose mel front-end (``torchfb``) is the DFT convolution ONNX can express."""
    if not isinstance(getattr(model, "torchfb", None), torchaudio.transforms.MelSpectrogram):
        raise ExportError(f"{type(model).__module__} holds no torchaudio MelSpectrogram as `torchfb`, the front-end "
                          "every model plugin declares (models/__init__.py).")
    out = readable_copy(model)
    out.torchfb = DftMelSpectrogram(out.torchfb)
    return out


def parity_waves(seed: int = 0) -> list[torch.Tensor]:
    """Test waveforms of ``PARITY_SECONDS``: a tone in noise, (2, samples) for the first length (a batch), (1,
    samples) otherwise; the last fades to -60 dB in its second half, as speech fades into silence, where the log of
    small mel powers is most sensitive to rounding."""
    rng = np.random.default_rng(seed)
    waves = []
    for i, seconds in enumerate(PARITY_SECONDS):
        samples = int(seconds * SAMPLE_RATE)
        tone = np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(samples) / SAMPLE_RATE)
        wave = 0.1 * tone + 0.05 * rng.standard_normal((2 if i == 0 else 1, samples))
        if i == len(PARITY_SECONDS) - 1:
            wave[:, samples // 2:] *= 1e-3
        waves.append(torch.from_numpy(wave.astype(np.float32)))
    return waves


def parity(got: list[np.ndarray], expected: list[np.ndarray]) -> dict[str, float]:
    """How far embeddings ``got`` are from ``expected`` (lists of (B, nOut)), in what users consume: the largest
    relative error of an embedding, ||got - expected|| / ||expected||, and the largest difference of the cosine
    score of a pair of them."""
    got_all, expected_all = np.concatenate(got).astype(np.float64), np.concatenate(expected).astype(np.float64)
    norms = np.linalg.norm(expected_all, axis=1)
    relative = float(np.max(np.linalg.norm(got_all - expected_all, axis=1) / np.maximum(norms, 1e-30)))
    unit_got = got_all / np.maximum(np.linalg.norm(got_all, axis=1, keepdims=True), 1e-30)
    unit_expected = expected_all / np.maximum(norms[:, None], 1e-30)
    upper = np.triu_indices(len(expected_all), k=1)
    score = float(np.max(np.abs(unit_got @ unit_got.T - unit_expected @ unit_expected.T)[upper]))
    return {"embedding_relative_error": relative, "score_error": score}


def _check_parity(run: Backend, expected: list[np.ndarray], fmt: str) -> dict[str, Any]:
    """Run the exported ``run`` on ``parity_waves`` and compare with the eager embeddings ``expected``; refuse
    when an embedding or a score differs by more than its limit."""
    got = []
    for wave, eager in zip(parity_waves(), expected, strict=True):
        got.append(run(wave.numpy()))
        if got[-1].shape != eager.shape:
            raise ExportError(f"The {fmt} export returns {got[-1].shape} for a {tuple(wave.shape)} input, the eager "
                              f"model {eager.shape}.")
    found = parity(got, expected)
    limits = {"embedding_relative_error": EMBEDDING_TOLERANCE, "score_error": SCORE_TOLERANCE}
    log.info("%s parity on %s s: embeddings %.2e (relative L2), cosine scores %.2e (limits %.0e, %.0e)", fmt,
             ", ".join(map(str, PARITY_SECONDS)), found["embedding_relative_error"], found["score_error"],
             EMBEDDING_TOLERANCE, SCORE_TOLERANCE)
    if not all(found[key] <= limit for key, limit in limits.items()):
        raise ExportError(f"The {fmt} export differs from the eager model: its embeddings by "
                          f"{found['embedding_relative_error']:.2e} (||export - eager|| / ||eager||, limit "
                          f"{EMBEDDING_TOLERANCE:.0e}), the cosine scores of pairs by {found['score_error']:.2e} "
                          f"(limit {SCORE_TOLERANCE:.0e}); nothing was written.")
    return {"seconds": list(PARITY_SECONDS), **found, "limits": limits, "passed": True}


def export_torchscript(eager: nn.Module, path: Path, expected: list[np.ndarray]) -> dict[str, Any]:
    """Trace the readable ``eager`` model to TorchScript at ``path`` and check that its embeddings equal
    ``expected`` (eager, on ``parity_waves``); returns the parity result."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(eager, parity_waves()[0], check_trace=False)
    torch.jit.save(traced, str(path))
    return _check_parity(TorchScriptBackend(path), expected, "torchscript")


def export_onnx(eager: nn.Module, path: Path, expected: list[np.ndarray], opset: int) -> dict[str, Any]:
    """Export the readable ``eager`` model to ONNX at ``path`` (input 'wave' (batch, samples), output 'embedding'
    (batch, nOut)) and check that onnxruntime's embeddings equal ``expected``; returns the parity result."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, chosen on purpose
        warnings.simplefilter("ignore", UserWarning)  # constant-folding notes and instance_norm's train flag
        torch.onnx.export(onnx_ready(eager), (parity_waves()[0],), str(path), dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=["embedding"],
                          dynamic_axes={"wave": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}})
    return {**_check_parity(OnnxBackend(path, torch.get_num_threads()), expected, "onnx"), "opset": opset}


def carried_scoring(path: str | Path, fingerprint: str, test_normalize: bool) -> tuple[dict[str, Any], Path,
                                                                                       dict[str, np.ndarray]]:
    """What an export carries of a calibrated evaluation (``path``: its result folder or its calibration.json):
    (the sidecar's 'scoring' entry, the calibration model file, the arrays of scoring.npz: the training-set
    'mean' under --mean_subtraction, the cohort's speaker vectors 'cohort' under --score_norm). Refused unless the
    calibration was trained on whole-utterance cosine scores (the API's) of these weights (``fingerprint``)."""
    path = Path(path)
    file = path / CALIBRATION_FILE if path.is_dir() else path
    if not file.is_file():
        raise ExportError(f"--calibration '{path}': no calibration model there; give the result folder of "
                          f"`trainSpeakerNet.py --eval --eval_frames 0 --calibration_list <labelled trials>` (it "
                          f"holds {CALIBRATION_FILE}) or that file.")
    try:
        _, data = read_model(file)
        settings = data["settings"]
        score_norm, mean_subtraction = str(settings["score_norm"]), bool(settings["mean_subtraction"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExportError(f"--calibration '{file}' is not a calibration model of this framework ({err}); train one "
                          f"with --eval --calibration_list.") from None
    if settings.get("protocol") != "whole":
        raise ExportError(f"--calibration '{file}' was trained on scores of the {settings.get('protocol')!r} "
                          f"protocol; an export scores whole utterances with the cosine: evaluate with --eval_frames 0 "
                          f"--calibration_list <labelled trials> and export with that calibration.")
    trained_with = data.get("model_fingerprint")
    if trained_with != fingerprint:
        raise ExportError(f"--calibration '{file}' was trained on the scores of "
                          f"{'other weights' if trained_with else 'unrecorded weights (an older version)'} than "
                          f"those exported: evaluate this checkpoint with --eval --eval_frames 0 --calibration_list "
                          f"and export with its result folder.")
    entry: dict[str, Any] = {"calibration": CALIBRATION_FILE, "arrays": None, "protocol": "whole",
                             "score_norm": score_norm, "top_n": settings.get("norm_top_n"),
                             "mean_subtraction": mean_subtraction, "source": str(file.resolve()),
                             "trained_on": data.get("trained_on")}
    arrays: dict[str, np.ndarray] = {}
    if score_norm != "none" or mean_subtraction:
        cohort_file = file.parent / COHORT_FILE
        found = load_npz(cohort_file)
        if found is None or any(key not in found[1] for key in COHORT_ARRAYS):
            raise ExportError(f"--calibration '{file}' was trained with --score_norm {score_norm} and "
                              f"--mean_subtraction {mean_subtraction}, which need the cohort, but '{cohort_file}' "
                              f"{'lacks per-file means (an older version)' if found else 'does not exist'}: give the "
                              f"result folder of that evaluation.")
        meta, cohort = found
        if meta.get("weights") != fingerprint or meta.get("test_normalize") != test_normalize:
            raise ExportError(f"The cohort '{cohort_file}' was embedded by other weights or settings than those "
                              f"exported: evaluate this checkpoint with --eval and export with its result folder.")
        if mean_subtraction:
            arrays["mean"] = raw_mean(torch.from_numpy(cohort["raw_means"])).numpy()
        if score_norm != "none":
            file_means = torch.from_numpy(cohort["centred_means" if mean_subtraction else "file_means"])
            arrays["cohort"] = speaker_vectors(file_means, torch.from_numpy(cohort["owner"]),
                                               len(cohort["names"])).numpy()
        entry["arrays"] = SCORING_ARRAYS
    return entry, file, arrays


def _publish(staged: Path, out: Path) -> None:
    """Move the files of a finished export ``staged`` into ``out``; the files of an earlier export there that this
    one lacks are removed, and its description goes last, so that ``out`` never describes files it lacks."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SIDECAR).unlink(missing_ok=True)
    for name in EXPORT_FILES:
        if not (staged / name).exists():
            (out / name).unlink(missing_ok=True)
    for file in sorted(staged.iterdir(), key=lambda f: f.name == SIDECAR):
        os.replace(file, out / file.name)


def export_model(model: nn.Module, out: str | Path, formats: tuple[str, ...], meta: dict[str, Any],
                 opset: int = DEFAULT_OPSET, calibration: str | Path | None = None) -> dict[str, Any]:
    """Export ``model`` in ``formats`` into the folder ``out`` with the sidecar ``export.json`` (``meta`` plus the
    files, the parity results and the versions) and, with ``calibration`` (a result folder or its
    calibration.json, see ``carried_scoring``), what calibrated decisions need; returns the sidecar. Everything is
    written to a temporary folder first and moved into ``out`` only when every format passed its parity check."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown export format(s) {unknown or formats}; valid: {', '.join(FORMATS)} or both.")
    if "onnx" in formats and opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the models need opset {MIN_OPSET} or newer (Einsum).")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' is a file; give the folder to write the export into.")
    eager = readable_copy(model)
    scoring = None
    if calibration is not None:
        scoring = carried_scoring(calibration, meta.get("weights") or weights_fingerprint(eager.state_dict()),
                                  bool(meta.get("test_normalize", True)))
    with torch.no_grad():
        expected = [eager(wave).numpy() for wave in parity_waves()]
    sidecar: dict[str, Any] = {**meta, "sample_rate": SAMPLE_RATE, "input": "wave (batch, samples) float32",
                               "output": "embedding (batch, nOut) float32", "files": {}, "parity": {},
                               "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp{os.getpid()}", dir=out.parent))
    try:
        for fmt in formats:
            path = staged / FILES[fmt]
            sidecar["parity"][fmt] = export_torchscript(eager, path, expected) if fmt == "torchscript" else \
                export_onnx(eager, path, expected, opset)
            sidecar["files"][fmt] = FILES[fmt]
        if scoring is not None:
            entry, file, arrays = scoring
            shutil.copyfile(file, staged / CALIBRATION_FILE)
            if arrays:
                np.savez(staged / SCORING_ARRAYS, **arrays)
            sidecar["scoring"] = entry
        (staged / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        written = sorted(file.name for file in staged.iterdir())
        _publish(staged, out)
    except OSError as err:
        raise ExportError(f"Cannot write the export into '{out}': {err.strerror or err}. Nothing was written; free "
                          f"disk space or make the folder writable, or export elsewhere (--out).") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("wrote %s to %s", ", ".join(written), out)
    return sidecar


def export_checkpoint(config: str | Path | None, checkpoint: str | Path, out: str | Path,
                      formats: tuple[str, ...], opset: int = DEFAULT_OPSET,
                      calibration: str | Path | None = None) -> dict[str, Any]:
    """Build the configured model, load ``checkpoint`` and export it (``export_model``)."""
    cfg = config_of(config, checkpoint)
    net = build_net(cfg)
    load_weights(net, checkpoint, cfg, with_loss=False)
    meta = {"model_settings": {k: getattr(cfg, k) for k in MODEL_KEYS}, "embedding_size": cfg.nOut,
            "test_normalize": test_normalize(net.loss), "checkpoint": str(Path(checkpoint).resolve()),
            "weights": weights_fingerprint(net.model.state_dict())}
    return export_model(net.model, out, formats, meta, opset, calibration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="", help="YAML config of the model (default: the checkpoint's own).")
    parser.add_argument("--initial_model", required=True, help="Checkpoint to export (ours or the official one).")
    parser.add_argument("--format", default="both", choices=(*FORMATS, "both"), help="What to write.")
    parser.add_argument("--out", required=True, help="Output folder (model.pt, model.onnx, export.json).")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset.")
    parser.add_argument("--calibration", default="", help="Result folder (or its calibration.json) of this "
                        "checkpoint's `--eval --eval_frames 0 --calibration_list`: the export then gives calibrated "
                        "llrs and decisions, with that evaluation's mean subtraction and score normalisation.")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        export_checkpoint(args.config or None, args.initial_model, args.out,
                          FORMATS if args.format == "both" else (args.format,), args.opset, args.calibration or None)
        return 0
    except UserError as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
