"""Checkpoints: one dict written atomically, read with ``weights_only=True``.

A checkpoint holds the model, loss head, optimizer, scheduler and scaler states, finished epochs, every library's random
state, the resolved config and the last metrics. Training resumes from the newest file in ``<save_path>/model/``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import MODEL_KEYS, Config, diff_model_settings
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_path, remove_temporaries

log = logging.getLogger(__name__)

FORMAT = "dtdy-sv-checkpoint"
_NAME = re.compile(r"^model(\d+)\.model$")
# What a checkpoint of ours holds, and the type of each: every reader needs 'model'; others need more (require).
PARTS = {"model": dict, "loss": dict, "config": dict, "epoch": int}


class CheckpointError(UserError):
    pass


def checkpoint_path(save_path: str | Path, epoch: int) -> Path:
    return Path(save_path) / "model" / f"model{epoch:09d}.model"


def latest_checkpoint(save_path: str | Path) -> Path | None:
    """``<save_path>/model/last.model`` (written every epoch), else the newest numbered checkpoint, else None."""
    folder = Path(save_path) / "model"
    if (folder / "last.model").is_file():
        return folder / "last.model"
    found = numbered_checkpoints(save_path)
    return found[-1] if found else None


def numbered_checkpoints(save_path: str | Path) -> list[Path]:
    """The numbered checkpoints ``<save_path>/model/modelNNNNNNNNN.model`` of a run, oldest first."""
    folder = Path(save_path) / "model"
    found = sorted((int(m.group(1)), p) for p in folder.glob("model*.model") if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over ``path`` (fileio.atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(save_path: str | Path) -> None:
    """Delete temporary files left in ``<save_path>/model/`` by a process killed while writing a checkpoint (only
    those of processes that are gone: the pid is in the name)."""
    remove_temporaries(Path(save_path) / "model")


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators, in weights_only-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (ours or the official DTDY code's) safely; errors name the file."""
    path = Path(path)
    if path.is_dir():
        hint = path / "model" / "last.model"
        raise CheckpointError(f"Checkpoint '{path}' is a folder; give a checkpoint file"
                              + (f", e.g. '{hint}'." if hint.is_file() else " (e.g. <save_path>/model/last.model)."))
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise CheckpointError(f"Cannot read checkpoint '{path}': {_load_failure(err)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint (a dict of weights and "
                              f"settings, ours or the official DTDY code's).")
    if obj.get("format") == FORMAT:
        require(obj, path, ("model",))
    return obj


def require(obj: dict[str, Any], path: str | Path, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint of ours that lacks one of ``keys`` (of PARTS), or holds it with another type."""
    bad = [f"'{key}'" for key in keys if not isinstance(obj.get(key), PARTS[key])]
    if bad:
        raise CheckpointError(f"Checkpoint '{path}' lacks {', '.join(bad)} (a checkpoint of this framework holds "
                              f"{', '.join(PARTS)}): it was not written by this framework, or was edited; use "
                              f"another checkpoint.")


def _load_failure(err: Exception) -> str:
    """Why torch.load failed, in one sentence, without PyTorch's advice on loading files unsafely."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    text = (found.group(1) if found else text).strip()
    first = text.splitlines()[0].split(". ")[0].strip() if text else ""
    if not first or "weights_only" in first or "safe_globals" in first:
        first = type(err).__name__
    if first.startswith("Unsupported global"):
        return (f"it holds a Python object that checkpoints of weights and settings never hold ({first}): it is "
                f"not a checkpoint of this framework or of the official DTDY code.")
    return f"it is not a PyTorch checkpoint, or it is damaged or truncated ({first}). Use another checkpoint."


def split_weights(obj: dict[str, Any], path: str | Path,
                  model_state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict | None]:
    """(model state, loss-head state, stored config or None) of a checkpoint in either format; official checkpoints are
    mapped onto ``model_state``."""
    if obj.get("format") == FORMAT:
        require(obj, path, ("model", "loss", "config"))
        return obj["model"], obj["loss"], obj["config"]
    from models._official import convert_official_checkpoint, is_official_checkpoint

    if is_official_checkpoint(obj):
        try:
            model_sd, loss_sd = convert_official_checkpoint(obj, model_state, source=f"'{path}'")
        except ValueError as err:
            raise CheckpointError(f"Official DTDY checkpoint '{path}' does not fit the configured model: {err}") \
                from None
        return model_sd, loss_sd, None
    raise CheckpointError(f"'{path}' is neither a checkpoint of this framework nor of the official DTDY code "
                          f"(a dict with 'model_state_dict' whose keys start with '__S__.').")


def check_compatible(stored: dict[str, Any] | None, cfg: Config, path: str | Path, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint whose config differs from ``cfg`` on ``keys``, naming every difference."""
    if stored is None:
        return
    diffs = diff_model_settings(stored, cfg)
    diffs += [f"{k}: checkpoint {stored[k]!r}, now {getattr(cfg, k)!r}"
              for k in keys if k not in MODEL_KEYS and k in stored and stored[k] != getattr(cfg, k)]
    if diffs:
        raise CheckpointError(f"Checkpoint '{path}' was made with other settings: " + "; ".join(diffs) +
                              ". Use the same settings (e.g. the checkpoint's config.yaml with --config), or "
                              "another --save_path (with --initial_model <checkpoint> to start from its weights).")


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    """load_state_dict(strict=True) with an error that names the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise CheckpointError(f"The {what} weights in '{path}' do not fit the configured {what}: " + "; ".join(parts)
                              + ". Was it trained with another --model, --encoder_type, --n_mels, --nOut, "
                                "--trainfunc or --nClasses?")
    module.load_state_dict(state, strict=True)


def training_state(trainer: Any, epoch: int, step: int, cfg: Config, owes_evaluation: bool = False) -> dict[str, Any]:
    """The checkpoint dict of a ``ModelTrainer`` with ``epoch`` epochs and ``step`` batches of the next done;
    ``owes_evaluation``: the evaluation of ``epoch`` is not written yet (a resume runs it first)."""
    net = trainer.speaker_net
    return {"format": FORMAT, "version": 1, "epoch": epoch, "step": step, "model": net.model.state_dict(),
            "loss": net.loss.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
            "rng": rng_state(), "config": cfg.to_dict(), "owes_evaluation": owes_evaluation}


def restore_training(state: dict[str, Any], trainer: Any, path: str | Path) -> tuple[int, int]:
    """Load a ``training_state`` into a trainer; returns (the epoch to start, the batches of it already done)."""
    net = trainer.speaker_net
    load_into(net.model, state["model"], "model", path)
    load_into(net.loss, state["loss"], "loss head", path)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state.get("step", 0)


class Saver:
    """Saves ``last.model`` at every epoch end, numbered checkpoints when asked and, with ``minutes`` > 0, the position
    inside an epoch. Only the main process writes. The numbered checkpoint is written before ``last.model``, and an
    evaluating epoch is saved as owing its evaluation until ``settle``, so a rerun after a kill finishes both."""

    def __init__(self, save_path: Path, cfg: Config, trainer: Any, steps: int, minutes: float, writes: bool) -> None:
        self.save_path, self.cfg, self.trainer, self.steps = Path(save_path), cfg, trainer, steps
        self.minutes, self.writes = minutes, writes
        self.last_save = time.monotonic()
        self.state: dict[str, Any] | None = None

    def epoch_end(self, epoch: int, numbered: bool, evaluating: bool) -> None:
        self.state = training_state(self.trainer, epoch, 0, self.cfg, owes_evaluation=evaluating)
        if self.writes:
            if numbered:
                atomic_save(self.state, checkpoint_path(self.save_path, epoch))
            atomic_save(self.state, self.save_path / "model" / "last.model")
        self.last_save = time.monotonic()

    def settle(self, state: dict[str, Any] | None = None) -> None:
        """Record the evaluation of the last saved epoch (or of the checkpoint ``state`` resumed from) as done."""
        state = state if state is not None else self.state
        if state is not None and state.get("owes_evaluation"):
            state["owes_evaluation"] = False
            if self.writes:
                atomic_save(state, self.save_path / "model" / "last.model")

    def timed(self, epoch: int, done: int) -> None:
        """Called after every step (``done`` batches of ``epoch`` finished): --checkpoint_minutes saves."""
        if self.minutes > 0 and done < self.steps and time.monotonic() - self.last_save > 60 * self.minutes:
            if self.writes and self.trainer.steps_so_far_finite():  # never a state touched by a non-finite step
                state = training_state(self.trainer, epoch - 1, done, self.cfg)
                atomic_save(state, self.save_path / "model" / "last.model")
            self.last_save = time.monotonic()
