"""Data preparation: one function per step, selected by flags, run in the order listed below.

    python dataprep.py --make_demo data/demo [--demo_seed 0]      # synthetic corpus for `make demo`, no download
    python dataprep.py --make_list --source data/voxceleb2/dev/wav --out data/train_list.txt

Steps:
  --make_demo DIR   write the demo corpus (demodata.py) to DIR: train/ and test/ in VoxCeleb layout,
                    train_list.txt, test_list.txt; skipped when DIR already holds it with the same settings.
  --make_list       write a voxceleb_trainer train list (``<speaker> <speaker>/<video>/<file>.wav``, sorted)
                    for the tree --source/<speaker>/<video>/<file>.wav to --out.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from config import UserError
from demodata import demo_corpus_complete, make_demo_corpus

log = logging.getLogger(__name__)


class DataPrepError(UserError):
    pass


# --demo_<flag> -> make_demo_corpus parameter; the defaults are read from its signature (defined once, there).
_DEMO_FLAGS = {"seed": "seed", "train_speakers": "n_train_speakers", "test_speakers": "n_test_speakers",
               "utts": "utts_per_speaker", "test_utts": "test_utts_per_speaker", "videos": "videos_per_speaker",
               "trials": "n_trials", "min_seconds": "min_seconds", "max_seconds": "max_seconds"}
_DEMO_HELP = {"seed": "random seed; the same seed gives byte-identical files",
              "train_speakers": "training speakers", "test_speakers": "held-out test speakers",
              "utts": "utterances per training speaker", "test_utts": "utterances per test speaker",
              "videos": "sessions ('videos', each with its own channel) per speaker",
              "trials": "trials in test_list.txt (half target, half non-target)",
              "min_seconds": "shortest utterance (s)", "max_seconds": "longest utterance (s)"}
_DEMO_DEFAULTS = {name: p.default for name, p in inspect.signature(make_demo_corpus).parameters.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = parser.add_argument_group("demo corpus")
    demo.add_argument("--make_demo", type=Path, metavar="DIR", help="write the synthetic demo corpus to DIR")
    for flag, name in _DEMO_FLAGS.items():
        default = _DEMO_DEFAULTS[name]
        demo.add_argument(f"--demo_{flag}", type=type(default), default=default,
                          help=f"{_DEMO_HELP[flag]} (default: {default})")
    lists = parser.add_argument_group("lists")
    lists.add_argument("--make_list", action="store_true", help="write a train list for the tree --source")
    lists.add_argument("--source", type=Path, metavar="DIR", help="--make_list: DIR/<speaker>/<video>/<file>.wav")
    lists.add_argument("--out", type=Path, metavar="LIST", help="--make_list: the list file to write")
    return parser


def make_demo(out_dir: Path, settings: dict[str, int | float]) -> dict:
    """Build the demo corpus in ``out_dir`` unless it is already there with these ``settings``."""
    if demo_corpus_complete(out_dir, settings):
        log.info("demo corpus already complete in %s with the same settings: skipping", out_dir)
        return {"skipped": True, "out_dir": str(out_dir)}
    return make_demo_corpus(out_dir, **settings)


def write_train_list(source: Path, out: Path) -> int:
    """Write ``<speaker> <speaker>/<video>/<file>.wav`` for every wav under ``source``, sorted; returns the count."""
    if not source.is_dir():
        raise DataPrepError(f"--source {source}: not a directory")
    lines = []
    for path in sorted(source.rglob("*.wav")):
        rel = path.relative_to(source)
        if len(rel.parts) != 3:
            raise DataPrepError(f"--source {source}: {rel} is not <speaker>/<video>/<file>.wav (VoxCeleb layout)")
        if any(c.isspace() for c in rel.as_posix()):
            raise DataPrepError(f"--source {source}: {rel} has whitespace in its path, which a list cannot hold")
        lines.append(f"{rel.parts[0]} {rel.as_posix()}\n")
    if not lines:
        raise DataPrepError(f"--source {source}: no .wav files found (expected <speaker>/<video>/<file>.wav)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, out)
    log.info("wrote %s: %d files of %d speakers", out, len(lines), len({line.split()[0] for line in lines}))
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_demo is None and not args.make_list:
        parser.error("nothing to do: choose a step (--make_demo DIR, --make_list)")
    if args.make_list and (args.source is None or args.out is None):
        parser.error("--make_list needs --source DIR and --out LIST")
    try:
        if args.make_demo is not None:
            make_demo(args.make_demo, {name: getattr(args, f"demo_{flag}") for flag, name in _DEMO_FLAGS.items()})
        if args.make_list:
            write_train_list(args.source, args.out)
    except UserError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
