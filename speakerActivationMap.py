#!/usr/bin/env python
"""Speaker Activation Map (SAM) command line and figures: which time-frequency regions a verification score rests on
(the maths, after the DTDY paper, arXiv 2203.15277, is dtdysv/sam.py).

    python speakerActivationMap.py --config exps/demo/config.yaml --enroll a.wav --test b.wav --layer layer4
    python speakerActivationMap.py --config exps/demo/config.yaml --enroll a.wav --test b.wav \\
        --layer layer1,layer2,layer3,layer4 --out sam.png --npy sam.npy
    python speakerActivationMap.py --config exps/demo/config.yaml --trials demo_data/test_list.txt \\
        --test_path demo_data/test/wav --max_trials 100 --out profile.png       # mean SAM per mel bin

Accepts every ``trainSpeakerNet.py`` option; weights are ``--initial_model``, else the newest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from config import Config, parse_args
from dtdysv.data.audio import HOP_LENGTH, SAMPLE_RATE, load_eval
from dtdysv.data.lists import read_trial_list
from dtdysv.errors import UserError
from dtdysv.runtime.distributed import DistEnv
from dtdysv.runtime.fileio import atomic_path
from dtdysv.runtime.setup import build_embedder, pick_device, setup_logging
from dtdysv.sam import (
    SamError,
    TrialSam,
    frequency_profile,
    layer_time_axes,
    model_mel_frequencies,
    speaker_activation_maps,
)

log = logging.getLogger("speakerActivationMap")

FRAME_S = HOP_LENGTH / SAMPLE_RATE  # the STFT is centred: frame t is centred at t * FRAME_S seconds
HZ_TICKS = (125, 250, 500, 1000, 2000, 4000, 6000, 8000)
SAM_CMAP = "jet"
SAM_OPACITY = 0.7  # overlay opacity where the map is 1; it fades to transparent where the map is 0


# --- figures ---------------------------------------------------------------------------------------------------------

def _hz_axis(ax, centres: np.ndarray, axis: str) -> None:
    """Label a mel-bin-index axis with frequencies in Hz."""
    ticks = [hz for hz in HZ_TICKS if centres[0] <= hz <= centres[-1]]
    positions = np.interp(ticks, centres, np.arange(len(centres)))
    labels = [f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in ticks]
    if axis == "y":
        ax.set_yticks(positions, labels)
        ax.set_ylabel("frequency (Hz)")
    else:
        ax.set_xticks(positions, labels)
        ax.set_xlabel("frequency (Hz)")


def plot_trial(result: TrialSam, centres: np.ndarray, out: str | Path, title: str,
               names: tuple[str, str] = ("enrollment", "test"), dpi: int = 110) -> None:
    """Log-mel spectrograms with the SAM overlaid: rows enrollment and test, one column per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = len(result.layers)
    fig, axes = plt.subplots(2, n_layers, figsize=(1.5 + 4.6 * n_layers, 6.4), squeeze=False,
                             constrained_layout=True)
    cmap = plt.get_cmap(SAM_CMAP)
    for row, (logmel, maps, name) in enumerate(((result.enroll_logmel, result.enroll_maps, names[0]),
                                                (result.test_logmel, result.test_maps, names[1]))):
        n_mels, frames = logmel.shape
        extent = (-0.5 * FRAME_S, (frames - 0.5) * FRAME_S, -0.5, n_mels - 0.5)  # frame t: (t -/+ 0.5) * FRAME_S
        for col, layer in enumerate(result.layers):
            ax = axes[row, col]
            ax.imshow(logmel, origin="lower", aspect="auto", cmap="gray", extent=extent, interpolation="nearest")
            overlay = cmap(maps[col])  # (n_mels, frames, 4) RGBA, opacity growing with the map
            overlay[..., 3] = SAM_OPACITY * maps[col]
            ax.imshow(overlay, origin="lower", aspect="auto", extent=extent, interpolation="bilinear")
            if not maps[col].any():
                ax.text(0.5, 0.5, "SAM zero everywhere", transform=ax.transAxes, ha="center", va="center",
                        bbox={"facecolor": "white", "alpha": 0.8})
            _hz_axis(ax, centres, "y")
            ax.set_xlabel("time (s)")
            ax.set_title(f"{name}, SAM at {layer}", fontsize=10)
            if col > 0:
                ax.set_ylabel("")
    fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), cmap), ax=axes, shrink=0.8,
                 label="SAM (opacity grows with it)")
    fig.suptitle(f"{title}   cosine score {result.score:.3f}")
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(out).suffix[1:] or "png")
    plt.close(fig)


def plot_profile(profiles: np.ndarray, layers: Sequence[str], centres: np.ndarray, out: str | Path,
                 title: str, dpi: int = 110) -> None:
    """Mean SAM per mel bin, one line per layer; profiles (n_layers, n_mels), x axis in Hz (mel-spaced)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    for profile, layer in zip(profiles, layers, strict=True):
        ax.plot(np.arange(len(centres)), profile, marker=".", label=layer)
    _hz_axis(ax, centres, "x")
    ax.set_ylabel("mean SAM over time")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="layer")
    ax.set_title(title)
    with atomic_path(out, suffix=Path(out).suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(out).suffix[1:] or "png")
    plt.close(fig)


# --- command line --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerActivationMap.py", allow_abbrev=False,
        description="Speaker Activation Map (Grad-CAM of the cosine score) of a trial, or the mean frequency "
                    "profile over the target trials of a list.",
        epilog="Every option of trainSpeakerNet.py is accepted too (--config, --initial_model, --save_path, --model, "
               "--encoder_type, --n_mels, --nOut, --test_path, --device, ...): see `python trainSpeakerNet.py "
               "--help`. The weights are --initial_model, else the newest checkpoint under --save_path.")
    add = parser.add_argument
    add("--enroll", type=str, metavar="WAV", help="enrollment wav (16 kHz mono)")
    add("--test", type=str, metavar="WAV", help="test wav (16 kHz mono)")
    add("--trials", type=str, metavar="LIST", help="trial list '<label> <enroll> <test>' under --test_path: average "
                                                   "the SAM over its target trials into a frequency profile")
    add("--max_trials", type=int, metavar="N", default=100,
        help="--trials: at most this many target trials, evenly spaced through the list (default: 100)")
    add("--layer", type=str, metavar="NAMES", default="layer4",
        help="layer(s), comma-separated: submodule names such as layer4 or layer3.5.conv2 (default: layer4)")
    add("--out", type=str, metavar="PNG", help="figure to write (default: sam.png, with --trials sam_profile.png)")
    add("--dpi", type=int, default=110, help="figure resolution in dots per inch (default: 110)")
    add("--npy", type=str, metavar="NPY",
        help="also save the maps as a NumPy array: (n_layers, n_mels, frames) of the test utterance (the "
             "enrollment's beside it as *_enroll.npy); with --trials the profiles (n_layers, n_mels)")
    return parser


def _load_wave(path: str) -> torch.Tensor:
    if not Path(path).is_file():
        raise SamError(f"Audio file '{path}' does not exist.")
    return torch.from_numpy(load_eval(path, 0, 1)[0])


def _select_trials(path: str, test_path: str, max_trials: int) -> list[tuple[str, str]]:
    trials = read_trial_list(path, test_path)
    pairs = list(zip(trials.enroll, trials.test, strict=True))
    if trials.labels is not None:
        pairs = [p for p, label in zip(pairs, trials.labels, strict=True) if label == 1]
        if not pairs:
            raise SamError(f"Trial list '{path}' (--trials) has no target trials (label 1).")
    else:
        log.info("'%s' is unlabeled: averaging over all its trials", path)
    if len(pairs) > max_trials:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_trials).round().astype(int)]
    root = Path(test_path)
    return [(str(root / e), str(root / t)) for e, t in pairs]


def _load_model(cfg: Config) -> nn.Module:
    """The configured model with the weights of --initial_model (or the newest checkpoint), in eval mode."""
    if cfg.compile:
        log.info("--compile is ignored here: the maps need the layers' activations and their gradients")
    embedder, _, _ = build_embedder(dataclasses.replace(cfg, compile=False), pick_device(cfg.device), DistEnv())
    model = embedder.model
    return model.requires_grad_(False)  # gradients are taken w.r.t. activations only


def _run_trial(args: argparse.Namespace, cfg: Config, model: nn.Module, layers: list[str],
               axes: dict[str, int]) -> list[str]:
    result = speaker_activation_maps(model, _load_wave(args.enroll), _load_wave(args.test), layers, cfg.log_input,
                                     axes)
    for name, enroll_map, test_map in zip(layers, result.enroll_maps, result.test_maps, strict=True):
        if not enroll_map.any() or not test_map.any():
            log.warning("layer %s: a SAM is zero everywhere (no channel's activation raises the score)", name)
    out = args.out or "sam.png"
    plot_trial(result, model_mel_frequencies(model), out, f"{cfg.model} ({cfg.encoder_type})",
               (f"enrollment {Path(args.enroll).name}", f"test {Path(args.test).name}"), args.dpi)
    written = [out]
    if args.npy:
        enroll_npy = str(Path(args.npy).with_name(Path(args.npy).stem + "_enroll.npy"))
        np.save(args.npy, result.test_maps)
        np.save(enroll_npy, result.enroll_maps)
        written += [args.npy, enroll_npy]
    print(f"score {result.score:.6f}")
    return written


def _run_profile(args: argparse.Namespace, cfg: Config, model: nn.Module, layers: list[str],
                 axes: dict[str, int]) -> list[str]:
    pairs = _select_trials(args.trials, cfg.test_path, args.max_trials)
    centres = model_mel_frequencies(model)
    total = np.zeros((len(layers), len(centres)))
    zero = np.zeros(len(layers), dtype=np.int64)  # all-zero maps per layer
    for enroll, test in tqdm(pairs, desc="trials", dynamic_ncols=True):
        result = speaker_activation_maps(model, _load_wave(enroll), _load_wave(test), layers, cfg.log_input, axes)
        for maps in (result.enroll_maps, result.test_maps):
            total += frequency_profile(maps)
            zero += ~maps.any(axis=(1, 2))
    profiles = total / (2 * len(pairs))
    for layer, profile, n_zero in zip(layers, profiles, zero, strict=True):
        log.info("layer %s: profile peaks at %.0f Hz; %d of %d maps zero everywhere", layer,
                 centres[int(np.argmax(profile))], n_zero, 2 * len(pairs))
    out = args.out or "sam_profile.png"
    plot_profile(profiles, layers, centres, out,
                 f"{cfg.model} ({cfg.encoder_type}): mean SAM of {2 * len(pairs)} utterances ({len(pairs)} trials)",
                 args.dpi)
    written = [out]
    if args.npy:
        np.save(args.npy, profiles.astype(np.float32))
        written.append(args.npy)
    return written


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args, rest = build_parser().parse_known_args(argv)
    try:
        cfg = parse_args(rest)
        single = args.enroll is not None or args.test is not None
        if single == (args.trials is not None) or (single and (args.enroll is None or args.test is None)):
            raise SamError("Give either --enroll WAV and --test WAV (one trial) or --trials LIST (a profile).")
        if args.max_trials < 1 or args.dpi < 10:
            raise SamError(f"--max_trials must be at least 1 and --dpi at least 10, got {args.max_trials} and "
                           f"{args.dpi}.")
        layers = [name.strip() for name in args.layer.split(",") if name.strip()]
        if not layers:
            raise SamError(f"--layer '{args.layer}' names no layer.")
        model = _load_model(cfg)
        axes = layer_time_axes(model, layers)
        written = (_run_trial if single else _run_profile)(args, cfg, model, layers, axes)
    except UserError as err:
        log.error("%s", err)
        return 2
    for file in written:
        print(f"wrote {file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
