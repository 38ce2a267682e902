"""Datasets, lists and the speaker-balanced sampler (voxceleb_trainer semantics, REFERENCE.md section 5).

Audio is 16 kHz mono. A training crop of ``max_frames`` frames is ``max_frames * 160 + 240`` samples, read with a
partial file read; shorter files are repeated to length. Every crop position is drawn from a generator seeded by
(seed, epoch, position in the epoch), so an epoch is reproducible whatever the number of workers. Files that are not
16 kHz mono are an error naming the file and its list line, or (``--resample``) are resampled (polyphase, reading
only the crop and a little context) and downmixed. Speed perturbation (``--speed_perturb``) resamples the same way;
augmentation (``--augment``) is augment.Augmenter, applied per crop in the workers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly
from torch.utils.data import Dataset, Sampler

from config import UserError

if TYPE_CHECKING:
    from augment import Augmenter

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms
WIN_LENGTH = 400  # 25 ms
MAX_REPORTED = 5  # offending lines quoted in an error
SPEEDS = (Fraction(1), Fraction(9, 10), Fraction(11, 10))  # speed perturbation, WeSpeaker's order (class offsets)
RESAMPLE_PAD = 64  # file samples read beyond a resampled crop on each side: no filter transient at its edges


class DataError(UserError):
    pass


def frames_to_samples(frames: int) -> int:
    """Samples in a crop of ``frames`` mel frames (200 -> 32,240)."""
    return frames * HOP_LENGTH + WIN_LENGTH - HOP_LENGTH


def _section(path: str | Path, what: str, offenders: list[str], hint: str) -> str:
    shown = "\n  ".join(offenders[:MAX_REPORTED])
    more = f"\n  ... and {len(offenders) - MAX_REPORTED} more" if len(offenders) > MAX_REPORTED else ""
    return f"{len(offenders)} {what} in '{path}':\n  {shown}{more}\n{hint}"


def _raise_problems(list_path: str | Path, malformed: list[str], hint: str, root: str | Path,
                    entries: list[tuple[int, str]], flag: str) -> None:
    """One error for all malformed lines and all missing files (of the well-formed lines) of a list."""
    missing = [f"line {n}: {Path(root) / rel}" for n, rel in entries if not (Path(root) / rel).is_file()]
    parts = [_section(list_path, "malformed lines", malformed, hint)] if malformed else []
    if missing:
        parts.append(_section(list_path, "listed files do not exist", missing,
                              f"Paths are relative to {flag} '{root}'; check that option and the list."))
    if parts:
        raise DataError("\n".join(parts))


def _read_lines(path: str | Path, flag: str) -> list[tuple[int, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"List file '{path}' ({flag}) does not exist.")
    out = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
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
    """Parse '<speaker_id> <relative path>' lines; speaker ids sorted and mapped to 0..N-1.

    Malformed lines and missing files are reported together, in one error.
    """
    rows = _read_lines(list_path, "--train_list")
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows if len(t) != 2]
    _raise_problems(list_path, bad, "Each line must be '<speaker_id> <path relative to --train_path>', "
                    "e.g. 'id00012 id00012/21Uxsk56VDQ/00001.wav'.", train_path,
                    [(n, t[1]) for n, t in rows if len(t) == 2], "--train_path")
    speakers = sorted({t[0] for _, t in rows})
    index = {s: i for i, s in enumerate(speakers)}
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
    """Parse '<label 0|1> <enroll> <test>' lines, or '<enroll> <test>' lines of an unlabeled list.

    ``check_files`` False skips the check that every file exists (scoring from cached embeddings)."""
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


def _describe(path: str, where: str) -> str:
    return f"'{path}' ({where})" if where else f"'{path}'"


def _open(path: str, resample: bool = False, where: str = "") -> soundfile.SoundFile:
    """An open audio file; refuses files that are undecodable, empty, or (unless ``resample``) not 16 kHz mono.
    ``where`` ('line N of <list>') is added to the error messages."""
    try:
        f = soundfile.SoundFile(path)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"Cannot decode audio file {_describe(path, where)}: {err}") from None
    problem = ""
    if f.frames <= 0:
        problem = "is empty."
    elif not resample and (f.samplerate != SAMPLE_RATE or f.channels != 1):
        problem = (f"is {f.samplerate} Hz with {f.channels} channel(s); expected {SAMPLE_RATE} Hz mono: convert it "
                   f"with `dataprep.py --convert`, or set --resample to resample and downmix while reading.")
    if problem:
        f.close()
        raise DataError(f"Audio file {_describe(path, where)} {problem}")
    return f


def _read(f: soundfile.SoundFile, start: int = 0, frames: int = -1, where: str = "") -> np.ndarray:
    """Samples [start, start + frames) of the open file ``f``, (n,) float32, channels averaged."""
    try:
        f.seek(start)
        audio = f.read(frames, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"Cannot decode audio file {_describe(f.name, where)}: {err}") from None
    if len(audio) == 0:
        raise DataError(f"Audio file {_describe(f.name, where)} has no samples from sample {start} on, although "
                        f"its header promises more: it is truncated.")
    return audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)


def _resample(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    if up == down:
        return audio
    return resample_poly(audio, up, down).astype(np.float32, copy=False)


def read_segment(path: str, samples: int, rng: np.random.Generator, resample: bool = False,
                 speed: Fraction = SPEEDS[0], where: str = "") -> np.ndarray:
    """A random segment of ``samples`` samples at 16 kHz, (samples,) float32, read with a partial file read.

    Files shorter than the segment are repeated to length. With ``resample`` other rates are resampled (polyphase)
    and channels averaged. ``speed`` > 1 plays faster (the segment spans ``speed`` times as much of the file).
    """
    with _open(path, resample, where) as f:
        ratio = Fraction(f.samplerate) * Fraction(speed) / SAMPLE_RATE  # file samples per output sample
        if ratio == 1:
            if f.frames <= samples:
                return np.resize(_read(f, where=where), samples)  # wrap-around repeat, as voxceleb_trainer pads
            start = int(rng.integers(0, f.frames - samples + 1))
            return np.resize(_read(f, start, samples, where), samples)
        up, down = ratio.denominator, ratio.numerator  # output rate / file rate = up / down
        span = math.ceil(samples * ratio)  # file samples under the segment
        if f.frames <= span:
            return np.resize(_resample(_read(f, where=where), up, down), samples)
        start = int(rng.integers(0, f.frames - span + 1))
        periods = min(math.ceil(RESAMPLE_PAD / down), start // down)  # context before the segment, whole periods
        first = start - periods * down
        last = min(f.frames, start + span + RESAMPLE_PAD)
        out = _resample(_read(f, first, last - first, where), up, down)
    return np.resize(out[periods * up:periods * up + samples], samples)


def load_crop(path: str, max_frames: int, rng: np.random.Generator, resample: bool = False,
              speed: Fraction = SPEEDS[0], where: str = "") -> np.ndarray:
    """A random crop of ``max_frames`` frames, (samples,) float32; short files are repeated to length."""
    return read_segment(path, frames_to_samples(max_frames), rng, resample, speed, where)


def read_audio(path: str, resample: bool = False, where: str = "") -> np.ndarray:
    """A whole file at 16 kHz, (samples,) float32 (resampled and downmixed when ``resample``)."""
    with _open(path, resample, where) as f:
        rate = Fraction(SAMPLE_RATE, f.samplerate)
        audio = _read(f, where=where)
    return _resample(audio, rate.numerator, rate.denominator)


def load_eval(path: str, eval_frames: int, num_eval: int, resample: bool = False, where: str = "") -> np.ndarray:
    """(num_eval, samples) evenly spaced crops of ``eval_frames`` frames, or (1, whole file) if eval_frames is 0."""
    audio = read_audio(path, resample, where)
    if eval_frames <= 0:
        return audio[None, :]
    need = frames_to_samples(eval_frames)
    if len(audio) < need:
        audio = np.resize(audio, need)
    starts = np.linspace(0, len(audio) - need, num=num_eval).astype(np.int64)
    return np.stack([audio[s:s + need] for s in starts])


class TrainDataset(Dataset):
    """Items are (crops (nPerSpeaker, samples) float32, label); indexed by the sampler's (indices, seed).

    All randomness of an item (crop positions, speed, augmentation) comes from its seed. With ``speed_perturb`` an
    item is played at a speed drawn from SPEEDS, and speed k makes speaker s class ``s + k * n_speakers``
    (WeSpeaker), so ``num_classes`` is 3x the speakers. ``augmenter`` (augment.Augmenter) augments every crop.
    """

    def __init__(self, train: TrainList, max_frames: int, augmenter: Augmenter | None = None,
                 speed_perturb: bool = False, resample: bool = False) -> None:
        self.train = train
        self.max_frames = max_frames
        self.augmenter = augmenter
        self.speed_perturb = speed_perturb
        self.resample = resample

    @property
    def num_classes(self) -> int:
        """Classes the loss head needs: the speakers, times 3 with speed perturbation."""
        return len(self.train.speakers) * (len(SPEEDS) if self.speed_perturb else 1)

    def __len__(self) -> int:
        return len(self.train.files)

    def __getitem__(self, item: tuple[tuple[int, ...], int]) -> tuple[torch.Tensor, int]:
        indices, seed = item
        rng = np.random.default_rng(seed)
        label = int(self.train.labels[indices[0]])
        speed = SPEEDS[0]
        if self.speed_perturb:
            k = int(rng.integers(len(SPEEDS)))
            speed, label = SPEEDS[k], label + k * len(self.train.speakers)
        crops = []
        for i in indices:
            crop = load_crop(self.train.files[i], self.max_frames, rng, self.resample, speed, self.train.where(i))
            crops.append(crop if self.augmenter is None else self.augmenter(crop, rng))
        return torch.from_numpy(np.stack(crops)), label


class TestDataset(Dataset):
    """Items are (crops (num_eval, samples) float32, file index). ``trials`` (the list the files come from) lets a
    bad file's error name its line."""

    __test__ = False  # not a pytest class

    def __init__(self, files: Sequence[str], test_path: str | Path, eval_frames: int, num_eval: int,
                 resample: bool = False, trials: TrialList | None = None) -> None:
        self.files = list(files)
        self.root = Path(test_path)
        self.eval_frames = eval_frames
        self.num_eval = num_eval
        self.resample = resample
        self.trials = trials

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = str(self.root / self.files[index])
        try:
            crops = load_eval(path, self.eval_frames, self.num_eval, self.resample)
        except DataError as err:
            if self.trials is None:
                raise
            raise DataError(f"{err} It is first listed on {self.trials.where(self.files[index])}.") from None
        return torch.from_numpy(crops), index


class SpeakerBalancedSampler(Sampler):
    """voxceleb_trainer's sampler: ``batch_size`` speakers x ``nPerSpeaker`` utterances per batch.

    Each speaker contributes at most ``max_seg_per_spk`` utterances per epoch, in groups of ``nPerSpeaker``. The
    groups are shuffled and packed into batches in which no speaker appears twice; a group whose speaker is already
    in the current batch is deferred to a later batch, not dropped. The epoch is cut to a whole number of batches
    per rank, and rank r takes every ``world_size``-th batch. Yields ``(indices, seed)`` per group.
    """

    def __init__(self, labels: np.ndarray, nPerSpeaker: int, max_seg_per_spk: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or nPerSpeaker < 1:
            raise DataError(f"batch_size ({batch_size}) and nPerSpeaker ({nPerSpeaker}) must be positive.")
        n_speakers = int(labels.max()) + 1 if len(labels) else 0
        if n_speakers < batch_size:
            raise DataError(f"batch_size is {batch_size} speakers per batch but the train list has only "
                            f"{n_speakers} speakers; use --batch_size {n_speakers} or less.")
        self.labels = np.asarray(labels)
        self._label_of: list[int] = self.labels.tolist()  # fast scalar look-ups while packing
        self.nPerSpeaker = nPerSpeaker
        self.max_seg_per_spk = max_seg_per_spk
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.first_batch = 0
        self._groups: list[tuple[int, ...]] | None = None

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Select the epoch (reshuffles) and, to resume inside it, the first batch of this rank to yield."""
        self.epoch = epoch
        self.first_batch = first_batch
        self._groups = None

    def _make_groups(self) -> list[tuple[int, ...]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.labels))
        order = order[np.argsort(self.labels[order], kind="stable")]  # by speaker, shuffled within each speaker
        speakers, first, count = np.unique(self.labels[order], return_index=True, return_counts=True)
        usable = np.minimum(count, self.max_seg_per_spk) // self.nPerSpeaker * self.nPerSpeaker
        rank = np.arange(len(order)) - np.repeat(first, count)  # position of each utterance within its speaker
        kept = order[rank < np.repeat(usable, count)]  # the first `usable` utterances of each speaker
        groups = [tuple(g) for g in kept.reshape(-1, self.nPerSpeaker).tolist()]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        return self._pack(groups)

    def _pack(self, groups: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Order the groups into batches with distinct speakers, deferring clashes."""
        out: list[tuple[int, ...]] = []
        batch: list[tuple[int, ...]] = []
        speakers: set[int] = set()
        pending: deque[tuple[int, ...]] = deque()

        def try_add(group: tuple[int, ...]) -> bool:
            spk = self._label_of[group[0]]
            if len(batch) == self.batch_size or spk in speakers:
                return False
            batch.append(group)
            speakers.add(spk)
            return True

        for group in groups:
            if not try_add(group):
                pending.append(group)
            while len(batch) == self.batch_size:
                out.extend(batch)
                batch.clear()
                speakers.clear()
                for _ in range(len(pending)):  # a new batch: deferred groups go first, in order
                    deferred = pending.popleft()
                    if not try_add(deferred):
                        pending.append(deferred)
        # The tail: groups deferred because their speaker is already in the last, unfinished batch. Each is swapped
        # into an earlier batch that lacks its speaker, in exchange for a group whose speaker the last batch lacks,
        # so that the epoch length depends only on the number of groups, not on the shuffle.
        while pending:
            progress = False
            for _ in range(len(pending)):
                group = pending.popleft()
                if try_add(group) or self._swap_in(group, out, speakers, try_add):
                    progress = True
                else:
                    pending.append(group)
                if len(batch) == self.batch_size:
                    out.extend(batch)
                    batch.clear()
                    speakers.clear()
            if not progress:
                break
        per_step = self.batch_size * self.world_size
        return out[:len(out) // per_step * per_step]

    def _swap_in(self, group: tuple[int, ...], out: list[tuple[int, ...]], speakers: set[int],
                 try_add: Callable[[tuple[int, ...]], bool]) -> bool:
        spk = self._label_of[group[0]]
        for start in range(0, len(out), self.batch_size):
            members = out[start:start + self.batch_size]
            if any(self._label_of[m[0]] == spk for m in members):
                continue
            for j, member in enumerate(members):
                if self._label_of[member[0]] not in speakers and try_add(member):
                    out[start + j] = group
                    return True
        return False

    def groups(self) -> list[tuple[int, ...]]:
        if self._groups is None:
            self._groups = self._make_groups()
        return self._groups

    def __len__(self) -> int:
        return len(self.groups()) // self.world_size

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], int]]:
        groups = self.groups()
        nbatch = len(groups) // self.batch_size
        for b in range(self.rank + self.first_batch * self.world_size, nbatch, self.world_size):
            for j in range(b * self.batch_size, (b + 1) * self.batch_size):
                yield groups[j], _item_seed(self.seed, self.epoch, j)

    def batches_per_epoch(self) -> int:
        return math.floor(len(self) / self.batch_size)


def _item_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])
