#!/usr/bin/env python
"""Score utterances without a trial list: pairs, a folder, or a Kaldi ``wav.scp``, with an export or a checkpoint.

    python scoreSpeakers.py --model exported --pairs a.wav b.wav --pairs a.wav c.wav
    python scoreSpeakers.py --model exported --folder clips/                   # every pair of files in the folder
    python scoreSpeakers.py --model exported --folder clips/ --enroll s1.wav s2.wav   # each file vs one speaker
    python scoreSpeakers.py --config exps/demo/config.yaml --initial_model exps/demo/model/last.model \\
        --wav_scp data/wav.scp --pairs_file pairs.txt --out scores.txt

Scores are cosines of whole-utterance embeddings (speakerapi.py), written as 'score name1 name2' lines. A ``wav.scp``
has '<utt> <path>' lines; ``--pairs_file`` '[<label>] <utt1> <utt2>' lines.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dtdysv.data.lists import DataError, offenders_message
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_write_text, read_lines
from dtdysv.runtime.setup import setup_logging
from speakerapi import SpeakerVerifier

log = logging.getLogger("scoreSpeakers")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _lines(path: str | Path, flag: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the non-blank lines of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} '{path}' does not exist.")
    rows = [(n, line.split()) for n, line in enumerate(read_lines(path, f"{flag} '{path}'"), start=1) if line.strip()]
    if not rows:
        raise DataError(f"{flag} '{path}' has no lines.")
    return rows


def read_wav_scp(path: str | Path) -> dict[str, str]:
    """utterance id -> audio path of a Kaldi wav.scp ('<utt> <path>' lines; pipes and duplicate ids refused)."""
    entries: dict[str, str] = {}
    malformed, missing = [], []
    for n, tokens in _lines(path, "--wav_scp"):
        if len(tokens) != 2 or tokens[1].endswith("|"):
            malformed.append(f"line {n}: {' '.join(tokens)!r}")
        elif tokens[0] in entries:
            malformed.append(f"line {n}: utterance id '{tokens[0]}' appears twice")
        else:
            entries[tokens[0]] = tokens[1]
            if not Path(tokens[1]).is_file():
                missing.append(f"line {n}: {tokens[1]}")
    if malformed:
        raise DataError(offenders_message(f"malformed lines in '{path}' (--wav_scp)", malformed,
                                          "Each line is '<utterance id> <audio file>'; pipe commands are not read."))
    if missing:
        raise DataError(offenders_message(f"listed files do not exist in '{path}' (--wav_scp)", missing,
                                          "Paths are read as written (relative to the working folder)."))
    return entries


def read_pairs_file(path: str | Path, known: dict[str, str]) -> list[tuple[str, str]]:
    """(utt1, utt2) of '<utt1> <utt2>' or '<label> <utt1> <utt2>' lines, every id one of ``known``."""
    pairs, bad = [], []
    for n, tokens in _lines(path, "--pairs_file"):
        if len(tokens) not in (2, 3):
            bad.append(f"line {n}: {' '.join(tokens)!r}")
            continue
        unknown = [t for t in tokens[-2:] if t not in known]
        if unknown:
            bad.append(f"line {n}: {', '.join(unknown)} not in --wav_scp")
        else:
            pairs.append((tokens[-2], tokens[-1]))
    if bad:
        raise DataError(offenders_message(f"bad lines in '{path}' (--pairs_file)", bad,
                                          "Each line is '<utt1> <utt2>' or '<label> <utt1> <utt2>' with the "
                                          "utterance ids of --wav_scp."))
    return pairs


def folder_files(folder: str | Path) -> dict[str, str]:
    """name (path under ``folder``) -> path of every audio file below ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--folder '{folder}' is not a folder.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"--folder '{folder}' holds no audio files ({', '.join(AUDIO_SUFFIXES)}).")
    return {str(p.relative_to(folder)): str(p) for p in files}


def score_lines(sv: SpeakerVerifier, files: dict[str, str], pairs: Sequence[tuple[str, str]],
                batch: int) -> list[str]:
    """'score name1 name2' of every pair of names of ``files`` (each file embedded once)."""
    names = sorted({n for pair in pairs for n in pair})
    embeddings = sv.embed_many([files[n] for n in names], batch)
    row = {n: i for i, n in enumerate(names)}
    return [f"{sv.score(embeddings[row[a]], embeddings[row[b]]):.6f} {a} {b}" for a, b in pairs]


def enroll_lines(sv: SpeakerVerifier, enroll: Sequence[str], name: str, files: dict[str, str],
                 batch: int) -> list[str]:
    """'score <name> file' of each of ``files`` against the speaker enrolled from ``enroll``."""
    speaker = sv.enroll(enroll, batch)
    embeddings = sv.embed_many(list(files.values()), batch)
    return [f"{sv.score(speaker, e):.6f} {name} {n}" for n, e in zip(files, embeddings, strict=True)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreSpeakers.py", description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model (one of)")
    model.add_argument("--model", default="", help="Export folder or file of export.py.")
    model.add_argument("--initial_model", default="", help="Checkpoint to run as the eager model.")
    model.add_argument("--config", default="", help="With --initial_model: its YAML config (default: the "
                                                    "checkpoint's own).")
    what = parser.add_argument_group("what to score (one of)")
    what.add_argument("--pairs", nargs=2, action="append", default=[], metavar=("WAV1", "WAV2"),
                      help="A pair of audio files; repeat for more pairs.")
    what.add_argument("--folder", default="", help="Every pair of audio files under this folder (or, with "
                                                   "--enroll, each of them against the enrolled speaker).")
    what.add_argument("--wav_scp", default="", help="Kaldi wav.scp: every pair of its utterances, or those of "
                                                    "--pairs_file.")
    parser.add_argument("--enroll", nargs="+", default=[], help="--folder: audio files of one speaker.")
    parser.add_argument("--enroll_name", default="enrolled", help="Name of the --enroll speaker in the output.")
    parser.add_argument("--pairs_file", default="", help="--wav_scp: the pairs to score.")
    parser.add_argument("--out", default="", help="Score file to write (default: standard output).")
    parser.add_argument("--batch", type=int, default=16, help="Utterances of equal length embedded together.")
    parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"),
                        help="--model folder holding both: which to run.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                        help="TorchScript and eager models.")
    parser.add_argument("--resample", action="store_true", help="Resample and downmix audio that is not 16 kHz "
                                                                "mono (otherwise an error).")
    return parser


def _need_pairs(files: dict[str, str], source: str) -> None:
    """Refuse scoring every pair of ``files`` when there is no pair: one file."""
    if len(files) < 2:
        raise DataError(f"{source} holds one audio file ({next(iter(files))}), so there is no pair to score: give two "
                        f"or more files (or with --folder, score each file against a speaker: --enroll WAV ...).")


def run(args: argparse.Namespace) -> list[str]:
    """The score lines the arguments ask for."""
    if bool(args.model) == bool(args.initial_model):
        raise UserError("Give either --model (an export of export.py) or --initial_model (a checkpoint).")
    if sum(map(bool, (args.pairs, args.folder, args.wav_scp))) != 1:
        raise UserError("Give one of --pairs WAV1 WAV2, --folder DIR or --wav_scp FILE.")
    if args.enroll and not args.folder or args.pairs_file and not args.wav_scp:
        raise UserError("--enroll goes with --folder, --pairs_file with --wav_scp.")
    sv = SpeakerVerifier.from_export(args.model, args.format, args.device, args.resample) if args.model else \
        SpeakerVerifier.from_checkpoint(args.config or None, args.initial_model, args.device, args.resample)
    if args.pairs:
        files = {p: p for pair in args.pairs for p in pair}
        return score_lines(sv, files, [tuple(p) for p in args.pairs], args.batch)
    if args.folder:
        files = folder_files(args.folder)
        if args.enroll:
            return enroll_lines(sv, args.enroll, args.enroll_name, files, args.batch)
        _need_pairs(files, f"--folder '{args.folder}'")
        return score_lines(sv, files, list(itertools.combinations(files, 2)), args.batch)
    files = read_wav_scp(args.wav_scp)
    if not args.pairs_file:
        _need_pairs(files, f"--wav_scp '{args.wav_scp}'")
    pairs = read_pairs_file(args.pairs_file, files) if args.pairs_file else list(itertools.combinations(files, 2))
    return score_lines(sv, files, pairs, args.batch)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        lines = run(args)
    except UserError as err:
        log.error("%s", err)
        return 2
    text = "".join(line + "\n" for line in lines)
    if args.out:
        atomic_write_text(args.out, text)
        log.info("wrote %d scores to %s", len(lines), args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
