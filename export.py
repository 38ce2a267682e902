#!/usr/bin/env python
"""Export a model to TorchScript and ONNX, with a parity check against the eager model.

    python export.py --config exps/demo/config.yaml --initial_model exps/demo/model/last.model --out exported
    python export.py --initial_model exps/demo/model/last.model --format onnx --opset 17 --out exported

Writes ``model.pt``, ``model.onnx`` and ``export.json`` (settings, source checkpoint, parity results) into ``--out``.
Both graphs map ``wave`` (B, samples) float32 at 16 kHz to ``embedding`` (B, nOut), batch and time dynamic, mel
front-end inside. The readable model is exported on the CPU in eval mode (never the fast CPU path, never compiled):
TorchScript by tracing, ONNX by the TorchScript-based exporter with the STFT replaced by ``DftMelSpectrogram``. A file
whose embeddings differ from the eager model's by more than ``PARITY_TOLERANCE`` is not written.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

import speakerapi
from config import MODEL_KEYS
from dtdysv.data.audio import SAMPLE_RATE
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_path, atomic_write_text
from dtdysv.runtime.setup import build_net, load_weights, setup_logging, test_normalize

log = logging.getLogger("export")

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
SIDECAR = "export.json"
DEFAULT_OPSET = 17
MIN_OPSET = 12  # Einsum (the DTDY mixing) and reflect padding
PARITY_SECONDS = (0.7, 1.3, 2.0)
PARITY_TOLERANCE = 1e-4


class ExportError(UserError):
    pass


class DftMelSpectrogram(nn.Module):
    """torchaudio's power mel spectrogram (centred, reflect-padded STFT) as a conv1d with a windowed DFT basis: wave (B,
    samples) -> (B, n_mels, 1 + samples // hop), equal to ``torchfb(wave)`` to float32 rounding."""

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
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        n = torch.arange(n_fft, dtype=torch.float64)[None, :]
        angle = 2 * torch.pi * ((k * n) % n_fft) / n_fft  # exact phase from integer products
        basis = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)])  # (2 K, n_fft)
        self.register_buffer("basis", basis.float().unsqueeze(1))
        self.register_buffer("fb", torchfb.mel_scale.fb.detach().clone())
        self.hop, self.pad = spec.hop_length, n_fft // 2

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = F.pad(wave.unsqueeze(1), (self.pad, self.pad), mode="reflect")  # (B, 1, samples + n_fft)
        spec = F.conv1d(x, self.basis, stride=self.hop)  # (B, 2 K, frames)
        real, imag = spec.chunk(2, dim=1)
        power = real * real + imag * imag  # (B, K, frames)
        return torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2)  # (B, n_mels, frames)


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
    """Test waveforms of ``PARITY_SECONDS``: (2, samples) for the first length (a batch), (1, samples) otherwise."""
    rng = np.random.default_rng(seed)
    waves = []
    for i, seconds in enumerate(PARITY_SECONDS):
        samples = int(seconds * SAMPLE_RATE)
        tone = np.sin(2 * np.pi * rng.uniform(100, 300) * np.arange(samples) / SAMPLE_RATE)
        wave = 0.1 * tone + 0.05 * rng.standard_normal((2 if i == 0 else 1, samples))
        waves.append(torch.from_numpy(wave.astype(np.float32)))
    return waves


def _check_parity(run: speakerapi.Backend, expected: list[np.ndarray], fmt: str) -> dict[str, Any]:
    """Compare the exported ``run`` on ``parity_waves`` with ``expected``; refuse beyond the tolerance."""
    worst = 0.0
    for wave, eager in zip(parity_waves(), expected, strict=True):
        got = run(wave.numpy())
        if got.shape != eager.shape:
            raise ExportError(f"The {fmt} export returns {got.shape} for a {tuple(wave.shape)} input, the eager "
                              f"model {eager.shape}.")
        worst = max(worst, float(np.abs(got - eager).max() / max(1.0, float(np.abs(eager).max()))))
    log.info("%s parity on %s s: max |export - eager| / max(1, max |eager|) = %.2e (tolerance %.0e)", fmt,
             ", ".join(map(str, PARITY_SECONDS)), worst, PARITY_TOLERANCE)
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"The {fmt} export differs from the eager model by {worst:.2e} (relative), more than "
                          f"{PARITY_TOLERANCE:.0e}; nothing was written.")
    return {"seconds": list(PARITY_SECONDS), "max_rel_diff": worst, "tolerance": PARITY_TOLERANCE, "passed": True}


def export_torchscript(eager: nn.Module, path: Path, expected: list[np.ndarray]) -> dict[str, Any]:
    """Trace ``eager`` to TorchScript at ``path`` if it passes the parity check; returns the result."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(eager, parity_waves()[0], check_trace=False)
    with atomic_path(path, ".pt") as tmp:
        torch.jit.save(traced, str(tmp))
        return _check_parity(speakerapi.TorchScriptBackend(tmp), expected, "torchscript")


def export_onnx(eager: nn.Module, path: Path, expected: list[np.ndarray], opset: int) -> dict[str, Any]:
    """Export ``eager`` to ONNX ('wave' (B, samples) -> 'embedding' (B, nOut)) if it passes parity."""
    with atomic_path(path, ".onnx") as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, chosen on purpose
            warnings.simplefilter("ignore", UserWarning)  # constant-folding notes and instance_norm's train flag
            torch.onnx.export(onnx_ready(eager), (parity_waves()[0],), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["wave"], output_names=["embedding"],
                              dynamic_axes={"wave": {0: "batch", 1: "samples"}, "embedding": {0: "batch"}})
        return {**_check_parity(speakerapi.OnnxBackend(tmp, torch.get_num_threads()), expected, "onnx"), "opset": opset}


def export_model(model: nn.Module, out: str | Path, formats: tuple[str, ...], meta: dict[str, Any],
                 opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export ``model`` in ``formats`` into ``out`` and write and return the ``export.json`` sidecar."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"Unknown export format(s) {unknown or formats}; valid: {', '.join(FORMATS)} or both.")
    if "onnx" in formats and opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the models need opset {MIN_OPSET} or newer (Einsum).")
    out = Path(out)
    eager = readable_copy(model)
    with torch.no_grad():
        expected = [eager(wave).numpy() for wave in parity_waves()]
    sidecar: dict[str, Any] = {**meta, "sample_rate": SAMPLE_RATE, "input": "wave (batch, samples) float32",
                               "output": "embedding (batch, nOut) float32", "files": {}, "parity": {},
                               "torch": torch.__version__}
    for fmt in formats:
        path = out / FILES[fmt]
        sidecar["parity"][fmt] = export_torchscript(eager, path, expected) if fmt == "torchscript" else \
            export_onnx(eager, path, expected, opset)
        sidecar["files"][fmt] = FILES[fmt]
        log.info("wrote %s", path)
    atomic_write_text(out / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def export_checkpoint(config: str | Path | None, checkpoint: str | Path, out: str | Path,
                      formats: tuple[str, ...], opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Build the configured model, load ``checkpoint`` and export it (``export_model``)."""
    cfg = speakerapi.config_of(config, checkpoint)
    net = build_net(cfg)
    load_weights(net, checkpoint, cfg, with_loss=False)
    meta = {"model_settings": {k: getattr(cfg, k) for k in MODEL_KEYS}, "embedding_size": cfg.nOut,
            "test_normalize": test_normalize(net.loss), "checkpoint": str(Path(checkpoint).resolve())}
    return export_model(net.model, out, formats, meta, opset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="", help="YAML config of the model (default: the checkpoint's own).")
    parser.add_argument("--initial_model", required=True, help="Checkpoint to export (ours or the official one).")
    parser.add_argument("--format", default="both", choices=(*FORMATS, "both"), help="What to write.")
    parser.add_argument("--out", required=True, help="Output folder (model.pt, model.onnx, export.json).")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset.")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        export_checkpoint(args.config or None, args.initial_model, args.out,
                          FORMATS if args.format == "both" else (args.format,), args.opset)
        return 0
    except UserError as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
