#!/usr/bin/env python
"""Score utterances without a trial list: pairs, a folder, or a Kaldi ``wav.scp``, with an export or a checkpoint.

    python scoreSpeakers.py --model exported --pairs a.wav b.wav --pairs a.wav c.wav
    python scoreSpeakers.py --model exported --folder clips/                   # every pair of files in the folder
    python scoreSpeakers.py --model exported --folder clips/ --enroll s1.wav s2.wav   # each file vs one speaker
    python scoreSpeakers.py --config exps/demo/config.yaml --initial_model exps/demo/model/last.model \\
        --wav_scp data/wav.scp --pairs_file pairs.txt --out scores.txt

The command of dtdysv/score_cli.py (installed as ``dtdysv-score``), which describes the options and the output,
plus ``--initial_model`` (with ``--config``, or the config stored in the checkpoint): the eager model of a
checkpoint instead of an export, whose lines are 'score name1 name2' (cosine; a calibration comes with an export).
"""

from __future__ import annotations

import argparse
import sys

from dtdysv import score_cli
from dtdysv.score_cli import enroll_lines, folder_files, read_pairs_file, read_wav_scp, score_lines
from speakerapi import SpeakerVerifier

__all__ = ["enroll_lines", "folder_files", "load_checkpoint", "main", "read_pairs_file", "read_wav_scp",
           "score_lines"]


def load_checkpoint(args: argparse.Namespace) -> SpeakerVerifier:
    """The eager model of --initial_model (and --config) for the scoring command."""
    return SpeakerVerifier.from_checkpoint(args.config or None, args.initial_model, args.device, args.resample)



def main(argv: list[str] | None = None) -> int:
    return score_cli.main(argv, load_checkpoint, prog="scoreSpeakers.py")


if __name__ == "__main__":
    sys.exit(main())
