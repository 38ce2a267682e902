#!/usr/bin/env python
"""Average the weights of several checkpoints of one run into a new checkpoint (WeSpeaker's model averaging).

    python averageCheckpoints.py --save_path exps/DTDY_ResNet34_half_ASP --last 5
    python averageCheckpoints.py --checkpoints exps/x/model/model000000190.model exps/x/model/model000000200.model \
        --out exps/x/model/average.model

Floating-point tensors (BatchNorm statistics too) are averaged in float64; integer tensors, the epoch and the config are
the newest checkpoint's. The result has no optimizer state (evaluate or fine-tune it; training does not resume).
``--last N`` writes ``<save_path>/model/average_last<N>.model`` unless ``--out`` is given; inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from config import MODEL_KEYS, Config, diff_model_settings
from dtdysv.errors import UserError
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.setup import setup_logging

log = logging.getLogger("averageCheckpoints")

def average_states(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str],
                   what: str) -> dict[str, torch.Tensor]:
    """The mean of state_dicts of equal keys and shapes; integer tensors are the last state's."""
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        if state.keys() != first.keys():
            extra = sorted(set(state) ^ set(first))[:5]
            raise ckpt.CheckpointError(f"The {what} of '{name}' and of '{names[0]}' have different tensors "
                                       f"({', '.join(extra)}): only checkpoints of one model can be averaged.")
        shapes = [k for k in first if state[k].shape != first[k].shape]
        if shapes:
            raise ckpt.CheckpointError(f"The {what} tensor '{shapes[0]}' has shape {tuple(state[shapes[0]].shape)} "
                                       f"in '{name}' and {tuple(first[shapes[0]].shape)} in '{names[0]}'.")
    for state, name in zip(states, names, strict=True):
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ckpt.CheckpointError(f"The {what} of '{name}' holds NaN or infinite values ({', '.join(bad[:5])}"
                                       f"{' ...' if len(bad) > 5 else ''}): its training had diverged. Average "
                                       f"checkpoints of epochs before that, leaving '{name}' out.")
    out = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            total = sum(state[key].double() for state in states)
            out[key] = (total / len(states)).to(value.dtype)
        else:
            out[key] = value.clone()  # counters: the newest checkpoint's
    return out


def average_checkpoints(paths: Sequence[str | Path], out: str | Path) -> dict:
    """Average the checkpoints ``paths`` (oldest first) into ``out``; returns the written checkpoint."""
    if len(paths) < 2:
        raise UserError(f"Averaging needs at least two checkpoints, got {len(paths)}.")
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in paths):
        raise UserError(f"--out '{out}' is one of the checkpoints to average; choose another file.")
    objs = [ckpt.read(p) for p in paths]
    names = [str(p) for p in paths]
    for obj, name in zip(objs, names, strict=True):
        if obj.get("format") != ckpt.FORMAT:
            raise ckpt.CheckpointError(f"'{name}' is not a checkpoint of this framework (official DTDY checkpoints "
                                       f"are converted by --initial_model, not averaged).")
        ckpt.require(obj, name, ("model", "loss", "config", "epoch"))
    newest = objs[-1]
    for obj, name in zip(objs[:-1], names[:-1], strict=True):
        diffs = diff_model_settings(obj["config"], Config(**{k: newest["config"][k] for k in MODEL_KEYS}))
        if diffs:
            raise ckpt.CheckpointError(f"'{name}' and '{names[-1]}' are of different models: {'; '.join(diffs)}.")
    averaged = {"format": ckpt.FORMAT, "version": newest.get("version", 1), "epoch": newest["epoch"], "step": 0,
                "model": average_states([o["model"] for o in objs], names, "model"),
                "loss": average_states([o["loss"] for o in objs], names, "loss head"),
                "config": newest["config"], "averaged_from": names}
    ckpt.atomic_save(averaged, out)
    log.info("averaged %d checkpoints (epochs %s) into %s", len(objs), ", ".join(str(o["epoch"]) for o in objs),
             out)
    return averaged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="averageCheckpoints.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--save_path", help="Experiment folder whose numbered checkpoints --last takes.")
    parser.add_argument("--last", type=int, default=0, help="Average the N newest numbered checkpoints.")
    parser.add_argument("--checkpoints", nargs="+", default=[], help="Checkpoint files to average, oldest first.")
    parser.add_argument("--out", default="", help="Output checkpoint (default with --last: "
                                                  "<save_path>/model/average_last<N>.model).")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        if bool(args.checkpoints) == bool(args.last):
            raise UserError("Give either --last N with --save_path, or --checkpoints FILE FILE ...")
        if args.last:
            if not args.save_path:
                raise UserError("--last needs --save_path (the experiment folder).")
            found = ckpt.numbered_checkpoints(args.save_path)
            if len(found) < args.last:
                raise UserError(f"--last {args.last}: '{Path(args.save_path) / 'model'}' holds {len(found)} numbered "
                                f"checkpoints ({', '.join(p.name for p in found) or 'none'}). Training keeps one at "
                                f"every evaluation (--test_interval) and every --save_interval epochs: train with "
                                f"--save_interval 1 to keep one per epoch, or name the files with --checkpoints.")
            paths = found[-args.last:]
            out = args.out or Path(args.save_path) / "model" / f"average_last{args.last}.model"
        else:
            if not args.out:
                raise UserError("--checkpoints needs --out (the averaged checkpoint to write).")
            paths, out = args.checkpoints, args.out
            resolved = [Path(p).resolve() for p in paths]
            if twice := sorted({str(p) for p in paths if resolved.count(Path(p).resolve()) > 1}):
                raise UserError(f"--checkpoints names the same file more than once ({', '.join(twice)}); an average "
                                f"of distinct checkpoints is meant: name each once.")
        average_checkpoints(paths, out)
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
