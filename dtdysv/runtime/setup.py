"""What every entry point shares: logging, device, seeding, DataLoader workers, and the configured model with its
weights (for training, or as an ``Embedder``)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from config import Config
from dtdysv.errors import UserError
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime import plugins
from dtdysv.runtime.distributed import DistEnv
from SpeakerNet import Embedder, SpeakerNet

log = logging.getLogger(__name__)


class _RunLog(logging.FileHandler):
    """The log file of one run (replaced when the same process starts another run)."""


def setup_logging(log_file: Path | None = None) -> None:
    """Console logging at INFO; with ``log_file``, also a copy of the log in that file."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if isinstance(h, _RunLog)]:
        root.removeHandler(handler)
        handler.close()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = _RunLog(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def pick_device(name: str) -> torch.device:
    """--device: 'auto' (CUDA when available), 'cuda' or 'cpu'."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_capped: set[tuple[int, int]] = set()  # (asked, cores) already logged


def loader_workers(asked: int, local_processes: int = 1) -> int:
    """--nDataLoaderThread capped at the cores available per local process (under torchrun the cores per GPU),
    logged once per process."""
    cores = max(1, available_cores() // local_processes)
    if asked <= cores:
        return asked
    if (asked, cores) not in _capped:
        _capped.add((asked, cores))
        log.info("--nDataLoaderThread %d: using %d DataLoader workers, the CPU cores available", asked, cores)
    return cores


def build_net(cfg: Config) -> SpeakerNet:
    """Model and loss head from their plugins, checking the loss's needs against the config."""
    model = plugins.build("model", cfg.model, cfg)
    loss = plugins.build("loss", cfg.trainfunc, cfg)
    need = getattr(loss, "min_per_speaker", 1)
    if cfg.nPerSpeaker < need:
        raise UserError(f"--trainfunc {cfg.trainfunc} needs --nPerSpeaker {need} or more (crops of each speaker in "
                        f"a batch); it is {cfg.nPerSpeaker}.")
    return SpeakerNet(model, loss)


def load_weights(net: SpeakerNet, path: str | Path, cfg: Config, with_loss: bool) -> dict:
    """Load model (and, when it fits, loss-head) weights from a checkpoint of ours or of the official code."""
    obj = ckpt.read(path)
    model_sd, loss_sd, stored = ckpt.split_weights(obj, path, net.model.state_dict())
    ckpt.check_compatible(stored, cfg, path, ())
    ckpt.load_into(net.model, model_sd, "model", path)
    if with_loss:
        same_head = stored is None or all(stored.get(k) == getattr(cfg, k) for k in ("trainfunc", "nClasses"))
        if same_head and loss_sd:
            ckpt.load_into(net.loss, loss_sd, "loss head", path)
        else:
            log.info("loss head of '%s' not loaded (another --trainfunc or --nClasses): it starts afresh", path)
    log.info("loaded weights from %s", path)
    return obj


def compile_model(net: SpeakerNet, cfg: Config) -> None:
    """--compile: torch.compile the embedding model in place (its state_dict keys do not change)."""
    if cfg.compile:
        log.info("compiling %s with torch.compile (mode %s): the first steps wait for the compiler", cfg.model,
                 cfg.compile_mode)
        net.model.compile(mode=cfg.compile_mode)


def test_normalize(loss: nn.Module) -> bool:
    """Whether the loss head wants test embeddings L2-normalised (``test_normalize``, default True)."""
    return bool(getattr(loss, "test_normalize", True))


def weights_path(cfg: Config) -> str | Path | None:
    """The weights inference uses: --initial_model, else the newest checkpoint under --save_path (None if none)."""
    return cfg.initial_model or ckpt.latest_checkpoint(cfg.save_path)


def build_embedder(cfg: Config, device: torch.device, env: DistEnv) -> tuple[Embedder, SpeakerNet, str | Path]:
    """(embedder, model + loss head, weights' file): the configured model with ``weights_path``'s weights on
    ``device``."""
    path = weights_path(cfg)
    if not path:
        raise UserError(f"--eval, --extract and speakerActivationMap.py need weights: give --initial_model, or "
                        f"train first so that '{Path(cfg.save_path) / 'model'}' holds a checkpoint.")
    net = build_net(cfg)
    load_weights(net, path, cfg, with_loss=False)
    net.to(device)
    compile_model(net, cfg)
    return Embedder(net.model, device, env, cfg.mixedprec, cfg.mixedprec_dtype,
                    cfg.fast_cpu_inference and not cfg.compile), net, path
