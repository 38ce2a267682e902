"""Data preparation CLI: one step per flag, run in the order below (steps in dtdysv/prep/, dtdysv/data/lists.py).

    python dataprep.py --download data/download --user USER --password PASS     # needs the owners' credentials
    python dataprep.py --extract data/download/vox2_dev_aac.zip --extract_to data/voxceleb2
    python dataprep.py --convert data/voxceleb2/dev/aac --convert_to data/voxceleb2/dev/wav
    python dataprep.py --split_musan data/musan --musan_split_to data/musan_split
    python dataprep.py --prepare_rir data/RIRS_NOISES --rir_to data/RIRS_NOISES/simulated_rirs
    python dataprep.py --make_list --source data/voxceleb2/dev/wav --out data/train_list.txt
    python dataprep.py --make_demo data/demo [--demo_seed 0]      # synthetic corpus for `make demo`, no download

Each step skips what an earlier run finished (outputs are written under a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dtdysv.data.lists import write_train_list
from dtdysv.errors import UserError
from dtdysv.prep.archives import DOWNLOADS, download, extract_archive, read_url_list
from dtdysv.prep.convert import convert_tree, prepare_rir, split_musan
from dtdysv.prep.demo import demo_corpus_complete, make_demo_corpus

log = logging.getLogger(__name__)


# --demo_<flag> -> make_demo_corpus parameter; the defaults are read from its signature (defined once, there).
_DEMO_FLAGS = {"seed": "seed", "train_speakers": "n_train_speakers", "test_speakers": "n_test_speakers",
               "utts": "utts_per_speaker", "test_utts": "test_utts_per_speaker", "videos": "videos_per_speaker",
               "trials": "n_trials", "min_seconds": "min_seconds", "max_seconds": "max_seconds",
               "calibration_speakers": "calibration_speakers"}
_DEMO_HELP = {"seed": "random seed; the same seed gives byte-identical files",
              "train_speakers": "training speakers", "test_speakers": "held-out test speakers",
              "utts": "utterances per training speaker", "test_utts": "utterances per test speaker",
              "videos": "sessions ('videos', each with its own channel) per speaker",
              "trials": "trials in test_list.txt (half target, half non-target)",
              "min_seconds": "shortest utterance (s)", "max_seconds": "longest utterance (s)",
              "calibration_speakers": "further held-out speakers whose trials make calibration_list.txt (0: none)"}
_DEMO_DEFAULTS = {name: p.default for name, p in inspect.signature(make_demo_corpus).parameters.items()}


def make_demo(out_dir: Path, settings: dict[str, int | float]) -> dict:
    """Build the demo corpus in ``out_dir`` unless it is already there with these ``settings``."""
    if demo_corpus_complete(out_dir, settings):
        log.info("demo corpus already complete in %s with the same settings: skipping", out_dir)
        return {"skipped": True, "out_dir": str(out_dir)}
    return make_demo_corpus(out_dir, **settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for --convert and --split_musan (default: the CPU count)")
    fetch = parser.add_argument_group("download and extract")
    fetch.add_argument("--download", type=Path, metavar="DIR", help="download the archives of --datasets to DIR")
    fetch.add_argument("--datasets", nargs="+", default=list(DOWNLOADS), metavar="NAME",
                       help=f"--download: which ({', '.join(DOWNLOADS)}; default: all)")
    fetch.add_argument("--user", help="--download: VoxCeleb username")
    fetch.add_argument("--password", default=os.environ.get("VOXCELEB_PASSWORD"),
                       help="--download: VoxCeleb password (default: $VOXCELEB_PASSWORD)")
    fetch.add_argument("--url_list", type=Path, metavar="FILE", help="--download: '<dataset> <url>' lines to use "
                       "instead of the built-in URL table")
    fetch.add_argument("--extract", type=Path, nargs="+", metavar="ARCHIVE", help="zip or tar archives to unpack")
    fetch.add_argument("--extract_to", type=Path, metavar="DIR", help="--extract: the folder to unpack into")
    audio = parser.add_argument_group("audio")
    audio.add_argument("--convert", type=Path, metavar="DIR", help="convert the audio tree DIR to 16 kHz mono wav")
    audio.add_argument("--convert_to", type=Path, metavar="DIR", help="--convert: the output tree")
    audio.add_argument("--split_musan", type=Path, metavar="DIR", help="split the extracted MUSAN in DIR")
    audio.add_argument("--musan_split_to", type=Path, metavar="DIR", help="--split_musan: output (--musan_path)")
    audio.add_argument("--prepare_rir", type=Path, metavar="DIR", help="the extracted RIRS_NOISES folder")
    audio.add_argument("--rir_to", type=Path, metavar="DIR", help="--prepare_rir: output (--rir_path)")
    audio.add_argument("--rir_copy", action="store_true", help="--prepare_rir: copy instead of linking")
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


def _need(parser: argparse.ArgumentParser, pairs: Iterable[tuple[Any, Any, str]]) -> None:
    for step, value, message in pairs:
        if step and value is None:
            parser.error(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    steps = (args.download, args.extract, args.convert, args.split_musan, args.prepare_rir, args.make_demo)
    if all(s is None for s in steps) and not args.make_list:
        parser.error("nothing to do: choose a step (--download, --extract, --convert, --split_musan, --prepare_rir, "
                     "--make_demo DIR, --make_list)")
    _need(parser, [(args.extract, args.extract_to, "--extract needs --extract_to DIR"),
                   (args.convert, args.convert_to, "--convert needs --convert_to DIR"),
                   (args.split_musan, args.musan_split_to, "--split_musan needs --musan_split_to DIR"),
                   (args.prepare_rir, args.rir_to, "--prepare_rir needs --rir_to DIR")])
    if args.make_list and (args.source is None or args.out is None):
        parser.error("--make_list needs --source DIR and --out LIST")
    try:
        if args.download is not None:
            table = read_url_list(args.url_list) if args.url_list else None
            download(args.download, args.datasets, args.user, args.password, table)
        for archive in args.extract or ():
            log.info("%s: %d files extracted", archive, extract_archive(archive, args.extract_to))
        if args.convert is not None:
            convert_tree(args.convert, args.convert_to, args.workers)
        if args.split_musan is not None:
            split_musan(args.split_musan, args.musan_split_to, args.workers)
        if args.prepare_rir is not None:
            prepare_rir(args.prepare_rir, args.rir_to, args.rir_copy)
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
