"""The scoring command line (``dtdysv-score`` once installed, ``scoreSpeakers.py`` in a checkout): score utterances
without a trial list, pairs, a folder, or a Kaldi ``wav.scp``, with an export of export.py.

    dtdysv-score --model exported --pairs a.wav b.wav --pairs a.wav c.wav
    dtdysv-score --model exported --folder clips/                             # every pair of files in the folder
    dtdysv-score --model exported --folder clips/ --enroll s1.wav s2.wav      # each file vs one speaker
    dtdysv-score --model exported --wav_scp data/wav.scp --pairs_file pairs.txt --out scores.txt

``--model`` is a folder (or file) written by export.py. Lines are 'score name1 name2' (6 decimals): the cosine of
whole-utterance embeddings (dtdysv/api.py). An export made with ``--calibration`` writes 'llr decision name1 name2'
instead: the calibrated log-likelihood ratio and 'accept' or 'reject' at the Bayes threshold of ``--p_target``,
``--c_miss`` and ``--c_fa`` (or at ``--threshold``); ``--threshold`` gives an uncalibrated export's lines a decision
too ('score decision name1 name2'). Lines go to ``--out`` or standard output. Names are the paths given (--pairs),
the paths under the folder (--folder), the utterance ids (--wav_scp) and ``--enroll_name``. A ``wav.scp`` has
'<utt> <path>' lines; ``--pairs_file`` '<utt1> <utt2>' or '<label> <utt1> <utt2>' lines.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dtdysv.api import C_FA, C_MISS, P_TARGET, SpeakerVerifier
from dtdysv.data.lists import DataError, offenders_message
from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_write_text, read_lines

log = logging.getLogger("dtdysv.score")

# Loads the eager model of a checkpoint: (args) -> SpeakerVerifier; scoreSpeakers.py gives one, the installed
# command has none
CheckpointLoader = Callable[[argparse.Namespace], SpeakerVerifier]

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


def _output(sv: SpeakerVerifier, scores: np.ndarray, llrs: np.ndarray | None, names: Sequence[tuple[str, str]],
           threshold: float | None) -> list[str]:
    """'value [decision] name1 name2' lines: llrs with decisions (calibrated), else scores, with decisions when a
    ``threshold`` is given."""
    values = scores if llrs is None else llrs
    if llrs is None and threshold is None:
        return [f"{v:.6f} {a} {b}" for v, (a, b) in zip(values, names, strict=True)]
    decisions = sv.decide(values, threshold)
    return [f"{v:.6f} {'accept' if d else 'reject'} {a} {b}"
            for v, d, (a, b) in zip(values, decisions, names, strict=True)]


def score_lines(sv: SpeakerVerifier, files: dict[str, str], pairs: Sequence[tuple[str, str]], batch: int,
                threshold: float | None = None) -> list[str]:
    """The lines of every pair of names of ``files`` (each file embedded once)."""
    names = sorted({n for pair in pairs for n in pair})
    embeddings, seconds = sv.embed_with_seconds([files[n] for n in names], batch)
    row = {n: i for i, n in enumerate(names)}
    first, second = (np.array([row[pair[k]] for pair in pairs], dtype=np.int64) for k in (0, 1))
    scores, llrs = sv.score_pairs(embeddings[first], embeddings[second], (seconds[first], seconds[second]))
    return _output(sv, scores, llrs, pairs, threshold)


def enroll_lines(sv: SpeakerVerifier, enroll: Sequence[str], name: str, files: dict[str, str], batch: int,
                 threshold: float | None = None) -> list[str]:
    """The lines of each of ``files`` against the speaker enrolled from ``enroll`` (for a calibrated llr, the
    speaker's duration is that of all its files)."""
    enrolled, enroll_seconds = sv.embed_with_seconds(enroll, batch)
    speaker = (enrolled / np.linalg.norm(enrolled, axis=1, keepdims=True)).mean(axis=0)
    embeddings, seconds = sv.embed_with_seconds(list(files.values()), batch)
    speakers = np.repeat(speaker[None], len(files), axis=0)
    scores, llrs = sv.score_pairs(speakers, embeddings, (np.full(len(files), enroll_seconds.sum()), seconds))
    return _output(sv, scores, llrs, [(name, n) for n in files], threshold)


def build_parser(checkpoints: bool = False, prog: str = "dtdysv-score") -> argparse.ArgumentParser:
    """The command's arguments; ``checkpoints``: also --initial_model and --config (scoreSpeakers.py)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model (one of)" if checkpoints else "model")
    model.add_argument("--model", default="", help="Export folder or file of export.py.")
    if checkpoints:
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
                        help="TorchScript" + (" and eager models." if checkpoints else " models."))
    parser.add_argument("--resample", action="store_true", help="Resample and downmix audio that is not 16 kHz "
                                                                "mono (otherwise an error).")
    decision = parser.add_argument_group("decisions")
    decision.add_argument("--p_target", type=float, default=P_TARGET,
                          help="A calibrated export: the prior of a target trial of the Bayes decision.")
    decision.add_argument("--c_miss", type=float, default=C_MISS, help="A calibrated export: the cost of a miss.")
    decision.add_argument("--c_fa", type=float, default=C_FA, help="A calibrated export: the cost of a false "
                                                                   "alarm.")
    decision.add_argument("--threshold", type=float, default=None,
                          help="Decide at this threshold instead: on the llr (calibrated export) or the score.")
    return parser


def _need_pairs(files: dict[str, str], source: str) -> None:
    """Refuse scoring every pair of ``files`` when there is no pair: one file."""
    if len(files) < 2:
        raise DataError(f"{source} holds one audio file ({next(iter(files))}), so there is no pair to score: give two "
                        f"or more files (or with --folder, score each file against a speaker: --enroll WAV ...).")


def run(args: argparse.Namespace, load_checkpoint: CheckpointLoader | None = None) -> list[str]:
    """The lines the arguments ask for; ``load_checkpoint`` runs --initial_model (scoreSpeakers.py)."""
    initial_model = getattr(args, "initial_model", "")
    if bool(args.model) == bool(initial_model):
        raise UserError("Give either --model (an export of export.py) or --initial_model (a checkpoint)."
                        if load_checkpoint else "Give --model: an export folder (or file) of export.py.")
    if sum(map(bool, (args.pairs, args.folder, args.wav_scp))) != 1:
        raise UserError("Give one of --pairs WAV1 WAV2, --folder DIR or --wav_scp FILE.")
    if args.enroll and not args.folder or args.pairs_file and not args.wav_scp:
        raise UserError("--enroll goes with --folder, --pairs_file with --wav_scp.")
    if args.model:
        sv = SpeakerVerifier.from_export(args.model, args.format, args.device, args.resample,
                                         p_target=args.p_target, c_miss=args.c_miss, c_fa=args.c_fa)
    else:
        sv = load_checkpoint(args)
    if sv.scoring is not None:
        where = f"--threshold {args.threshold}" if args.threshold is not None else \
            f"the Bayes threshold {sv.threshold:.3f} (p_target {args.p_target}, c_miss {args.c_miss}, c_fa {args.c_fa})"
        log.info("calibrated export: lines are 'llr decision name1 name2', accepted above %s", where)
    threshold = args.threshold
    if args.pairs:
        files = {p: p for pair in args.pairs for p in pair}
        return score_lines(sv, files, [tuple(p) for p in args.pairs], args.batch, threshold)
    if args.folder:
        files = folder_files(args.folder)
        if args.enroll:
            return enroll_lines(sv, args.enroll, args.enroll_name, files, args.batch, threshold)
        _need_pairs(files, f"--folder '{args.folder}'")
        return score_lines(sv, files, list(itertools.combinations(files, 2)), args.batch, threshold)
    files = read_wav_scp(args.wav_scp)
    if not args.pairs_file:
        _need_pairs(files, f"--wav_scp '{args.wav_scp}'")
    pairs = read_pairs_file(args.pairs_file, files) if args.pairs_file else list(itertools.combinations(files, 2))
    return score_lines(sv, files, pairs, args.batch, threshold)


def main(argv: list[str] | None = None, load_checkpoint: CheckpointLoader | None = None,
         prog: str = "dtdysv-score") -> int:
    """Run the command (``load_checkpoint``: see ``run``); the exit status: 0, or 2 for an error a user can fix."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root.setLevel(logging.INFO)
    args = build_parser(load_checkpoint is not None, prog).parse_args(argv)
    try:
        lines = run(args, load_checkpoint)
    except UserError as err:
        log.error("%s", err)
        return 2
    text = "".join(line + "\n" for line in lines)
    if args.out:
        atomic_write_text(args.out, text)
        log.info("wrote %d lines to %s", len(lines), args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
