"""List files (voxceleb_trainer's formats), read and written:

    train list   '<speaker_id> <path relative to --train_path>'
    trial list   '<label 0|1> <enroll> <test>', or '<enroll> <test>' (unlabeled), relative to --test_path

Lists are UTF-8 (a byte-order mark is dropped). Blank lines are skipped; errors quote every offending line with its
number, in one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_write_text, read_lines

log = logging.getLogger(__name__)

MAX_REPORTED = 5  # offenders quoted in an error


class DataError(UserError):
    pass


def offenders_message(what: str, offenders: list[str], hint: str) -> str:
    """'<count> <what>:' and the first MAX_REPORTED ``offenders``, one per line, then ``hint``."""
    shown = "\n  ".join(offenders[:MAX_REPORTED])
    more = f"\n  ... and {len(offenders) - MAX_REPORTED} more" if len(offenders) > MAX_REPORTED else ""
    return f"{len(offenders)} {what}:\n  {shown}{more}\n{hint}"


def _raise_problems(list_path: str | Path, malformed: list[str], hint: str, root: str | Path,
                    entries: list[tuple[int, str]], flag: str) -> None:
    """One error for all malformed lines and all missing files (of the well-formed lines) of a list."""
    missing = [f"line {n}: {Path(root) / rel}" for n, rel in entries if not (Path(root) / rel).is_file()]
    parts = [offenders_message(f"malformed lines in '{list_path}'", malformed, hint)] if malformed else []
    if missing:
        parts.append(offenders_message(f"listed files do not exist in '{list_path}'", missing,
                                       f"Paths are relative to {flag} '{root}'; check that option and the list."))
    if parts:
        raise DataError("\n".join(parts))


def _read_lines(path: str | Path, flag: str) -> list[tuple[int, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"List file '{path}' ({flag}) does not exist.")
    out = []
    for number, line in enumerate(read_lines(path, f"List file '{path}' ({flag})"), start=1):
        if line.strip():
            out.append((number, line.split()))
    if not out:
        raise DataError(f"List file '{path}' ({flag}) has no lines.")
    return out


@dataclass
class TrainList:
    files: list[str]  # full paths
    labels: np.ndarray  # (N,) int64, speaker index
    speakers: list[str]  # sorted speaker ids, index = label
    lines: list[int]  # list line of each file
    path: str = ""  # the list file, as given

    def where(self, index: int) -> str:
        """'line N of <list>' for file ``index``, for error messages."""
        return f"line {self.lines[index]} of '{self.path}'"


def read_train_list(list_path: str | Path, train_path: str | Path) -> TrainList:
    """Parse a train list; speaker ids sorted and mapped to 0..N-1."""
    rows = _read_lines(list_path, "--train_list")
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows if len(t) != 2]
    _raise_problems(list_path, bad, "Each line must be '<speaker_id> <path relative to --train_path>', "
                    "e.g. 'id00012 id00012/21Uxsk56VDQ/00001.wav'.", train_path,
                    [(n, t[1]) for n, t in rows if len(t) == 2], "--train_path")
    speakers = sorted({t[0] for _, t in rows})
    index = {s: i for i, s in enumerate(speakers)}
    first: dict[str, int] = {}
    repeats = [(n, first[t[1]]) for n, t in rows if first.setdefault(t[1], n) != n]
    if repeats:
        log.warning("%d lines of '%s' list a file already listed (e.g. line %d repeats line %d): each copy is "
                    "sampled as its own utterance; remove the repeats unless that is meant", len(repeats), list_path,
                    *repeats[0])
    return TrainList(files=[str(Path(train_path) / t[1]) for _, t in rows],
                     labels=np.array([index[t[0]] for _, t in rows], dtype=np.int64),
                     speakers=speakers, lines=[n for n, _ in rows], path=str(list_path))


@dataclass
class TrialList:
    path: str  # the list file, as given
    labels: np.ndarray | None  # (N,) int64, or None for an unlabeled list
    enroll: list[str]  # as written in the list
    test: list[str]
    lines: list[int] = field(default_factory=list)  # list line of each trial

    @property
    def files(self) -> list[str]:
        """Unique files of the list, in order of first appearance."""
        return list(dict.fromkeys(f for pair in zip(self.enroll, self.test, strict=True) for f in pair))

    def where(self, file: str) -> str:
        """'line N of <list>' for the first trial naming ``file``, for error messages."""
        for n, enroll, test in zip(self.lines, self.enroll, self.test, strict=False):
            if file in (enroll, test):
                return f"line {n} of '{self.path}'"
        return f"'{self.path}'"


def read_trial_list(list_path: str | Path, test_path: str | Path, check_files: bool = True) -> TrialList:
    """Parse a trial list; ``check_files`` False skips the file-existence check."""
    rows = _read_lines(list_path, "--test_list")
    hint = ("Each line must be '<label 0|1> <enroll path> <test path>' (or '<enroll> <test>' for an unlabeled "
            "list, the same on every line), paths relative to --test_path.")
    # The first line decides between labeled and unlabeled; if it is neither, any 3-column line does.
    ncols = len(rows[0][1]) if len(rows[0][1]) in (2, 3) else 3 if any(len(t) == 3 for _, t in rows) else 2
    good = [len(t) == ncols and (ncols == 2 or t[0] in ("0", "1")) for _, t in rows]
    bad = [f"line {n}: {' '.join(t)!r}" for (n, t), ok in zip(rows, good, strict=True) if not ok]
    first_line: dict[str, int] = {}
    for (n, t), ok in zip(rows, good, strict=True):
        for rel in t[-2:] if ok else ():
            first_line.setdefault(rel, n)
    _raise_problems(list_path, bad, hint, test_path,
                    [(n, rel) for rel, n in first_line.items()] if check_files else [], "--test_path")
    return TrialList(path=str(list_path), labels=np.array([int(t[0]) for _, t in rows]) if ncols == 3 else None,
                     enroll=[t[-2] for _, t in rows], test=[t[-1] for _, t in rows], lines=[n for n, _ in rows])


def write_train_list(source: Path, out: Path) -> int:
    """Write ``<speaker> <speaker>/<video>/<file>.wav`` for every wav under ``source``, sorted; returns the count."""
    if not source.is_dir():
        raise DataError(f"--source {source}: not a directory")
    lines = []
    for path in sorted(source.rglob("*.wav")):
        rel = path.relative_to(source)
        if len(rel.parts) != 3:
            raise DataError(f"--source {source}: {rel} is not <speaker>/<video>/<file>.wav (VoxCeleb layout)")
        if any(c.isspace() for c in rel.as_posix()):
            raise DataError(f"--source {source}: {rel} has whitespace in its path, which a list cannot hold")
        lines.append(f"{rel.parts[0]} {rel.as_posix()}\n")
    if not lines:
        raise DataError(f"--source {source}: no .wav files found (expected <speaker>/<video>/<file>.wav)")
    atomic_write_text(out, "".join(lines))
    log.info("wrote %s: %d files of %d speakers", out, len(lines), len({line.split()[0] for line in lines}))
    return len(lines)
