"""Datasets, lists and the speaker-balanced sampler (voxceleb_trainer semantics, REFERENCE.md section 5).

Audio is 16 kHz mono. A training crop of ``max_frames`` frames is ``max_frames * 160 + 240`` samples, read with a
partial file read; shorter files are repeated to length. Every crop position is drawn from a generator seeded by
(seed, epoch, position in the epoch), so an epoch is reproducible whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset, Sampler

from config import UserError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 10 ms
WIN_LENGTH = 400  # 25 ms
MAX_REPORTED = 5  # offending lines quoted in an error


class DataError(UserError):
    pass


def frames_to_samples(frames: int) -> int:
    """Samples in a crop of ``frames`` mel frames (200 -> 32,240)."""
    return frames * HOP_LENGTH + WIN_LENGTH - HOP_LENGTH


def _report(path: str | Path, what: str, offenders: list[str], hint: str) -> DataError:
    shown = "\n  ".join(offenders[:MAX_REPORTED])
    more = f"\n  ... and {len(offenders) - MAX_REPORTED} more" if len(offenders) > MAX_REPORTED else ""
    return DataError(f"{len(offenders)} {what} in '{path}':\n  {shown}{more}\n{hint}")


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


def _check_files_exist(list_path: str | Path, root: str | Path, entries: list[tuple[int, str]], flag: str) -> None:
    missing = [f"line {n}: {Path(root) / rel}" for n, rel in entries if not (Path(root) / rel).is_file()]
    if missing:
        raise _report(list_path, "listed files do not exist", missing,
                      f"Paths are relative to {flag} '{root}'; check that option and the list.")


@dataclass
class TrainList:
    files: list[str]  # full paths
    labels: np.ndarray  # (N,) int64, speaker index
    speakers: list[str]  # sorted speaker ids, index = label
    lines: list[int]  # list line of each file


def read_train_list(list_path: str | Path, train_path: str | Path) -> TrainList:
    """Parse '<speaker_id> <relative path>' lines; speaker ids sorted and mapped to 0..N-1."""
    rows = _read_lines(list_path, "--train_list")
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows if len(t) != 2]
    if bad:
        raise _report(list_path, "malformed lines", bad,
                      "Each line must be '<speaker_id> <path relative to --train_path>', "
                      "e.g. 'id00012 id00012/21Uxsk56VDQ/00001.wav'.")
    _check_files_exist(list_path, train_path, [(n, t[1]) for n, t in rows], "--train_path")
    speakers = sorted({t[0] for _, t in rows})
    index = {s: i for i, s in enumerate(speakers)}
    return TrainList(files=[str(Path(train_path) / t[1]) for _, t in rows],
                     labels=np.array([index[t[0]] for _, t in rows], dtype=np.int64),
                     speakers=speakers, lines=[n for n, _ in rows])


@dataclass
class TrialList:
    path: str  # the list file, as given
    labels: np.ndarray | None  # (N,) int64, or None for an unlabeled list
    enroll: list[str]  # as written in the list
    test: list[str]

    @property
    def files(self) -> list[str]:
        """Unique files of the list, in order of first appearance."""
        return list(dict.fromkeys(f for pair in zip(self.enroll, self.test, strict=True) for f in pair))


def read_trial_list(list_path: str | Path, test_path: str | Path) -> TrialList:
    """Parse '<label 0|1> <enroll> <test>' lines, or '<enroll> <test>' lines of an unlabeled list."""
    rows = _read_lines(list_path, "--test_list")
    ncols = len(rows[0][1])
    hint = ("Each line must be '<label 0|1> <enroll path> <test path>' (or '<enroll> <test>' for an unlabeled "
            "list, the same on every line), paths relative to --test_path.")
    if ncols not in (2, 3):
        raise _report(list_path, "malformed lines", [f"line {rows[0][0]}: {' '.join(rows[0][1])!r}"], hint)
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows
           if len(t) != ncols or (ncols == 3 and t[0] not in ("0", "1"))]
    if bad:
        raise _report(list_path, "malformed lines", bad, hint)
    trials = TrialList(path=str(list_path), labels=np.array([int(t[0]) for _, t in rows]) if ncols == 3 else None,
                       enroll=[t[-2] for _, t in rows], test=[t[-1] for _, t in rows])
    first_line = {}
    for n, t in rows:
        for rel in t[-2:]:
            first_line.setdefault(rel, n)
    _check_files_exist(list_path, test_path, [(n, rel) for rel, n in first_line.items()], "--test_path")
    return trials


def _open_info(path: str) -> soundfile._SoundFileInfo:
    try:
        info = soundfile.info(path)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"Cannot decode audio file '{path}': {err}") from None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise DataError(f"Audio file '{path}' is {info.samplerate} Hz with {info.channels} channel(s); "
                        f"expected {SAMPLE_RATE} Hz mono (convert it with dataprep.py).")
    if info.frames == 0:
        raise DataError(f"Audio file '{path}' is empty.")
    return info


def _read(path: str, start: int = 0, frames: int = -1) -> np.ndarray:
    try:
        audio, _ = soundfile.read(path, start=start, frames=frames, dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"Cannot decode audio file '{path}': {err}") from None
    return audio


def load_crop(path: str, max_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``max_frames`` frames, (samples,) float32; short files are repeated to length."""
    need = frames_to_samples(max_frames)
    length = _open_info(path).frames
    if length <= need:
        return np.resize(_read(path), need)  # wrap-around repeat, as voxceleb_trainer pads
    start = int(rng.integers(0, length - need + 1))
    return _read(path, start=start, frames=need)


def load_eval(path: str, eval_frames: int, num_eval: int) -> np.ndarray:
    """(num_eval, samples) evenly spaced crops of ``eval_frames`` frames, or (1, whole file) if eval_frames is 0."""
    _open_info(path)
    audio = _read(path)
    if eval_frames <= 0:
        return audio[None, :]
    need = frames_to_samples(eval_frames)
    if len(audio) < need:
        audio = np.resize(audio, need)
    starts = np.linspace(0, len(audio) - need, num=num_eval).astype(np.int64)
    return np.stack([audio[s:s + need] for s in starts])


class TrainDataset(Dataset):
    """Items are (crops (nPerSpeaker, samples) float32, label); indexed by the sampler's (indices, seed)."""

    def __init__(self, train: TrainList, max_frames: int) -> None:
        self.train = train
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.train.files)

    def __getitem__(self, item: tuple[tuple[int, ...], int]) -> tuple[torch.Tensor, int]:
        indices, seed = item
        rng = np.random.default_rng(seed)
        crops = np.stack([load_crop(self.train.files[i], self.max_frames, rng) for i in indices])
        return torch.from_numpy(crops), int(self.train.labels[indices[0]])


class TestDataset(Dataset):
    """Items are (crops (num_eval, samples) float32, file index)."""

    __test__ = False  # not a pytest class

    def __init__(self, files: Sequence[str], test_path: str | Path, eval_frames: int, num_eval: int) -> None:
        self.files = list(files)
        self.root = Path(test_path)
        self.eval_frames = eval_frames
        self.num_eval = num_eval

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        crops = load_eval(str(self.root / self.files[index]), self.eval_frames, self.num_eval)
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
        by_speaker: dict[int, list[int]] = {}
        for i in order:
            by_speaker.setdefault(int(self.labels[i]), []).append(int(i))
        groups: list[tuple[int, ...]] = []
        for spk in sorted(by_speaker):
            items = by_speaker[spk][:self.max_seg_per_spk]
            usable = len(items) - len(items) % self.nPerSpeaker
            groups += [tuple(items[j:j + self.nPerSpeaker]) for j in range(0, usable, self.nPerSpeaker)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        return self._pack(groups)

    def _pack(self, groups: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Order the groups into batches with distinct speakers, deferring clashes."""
        out: list[tuple[int, ...]] = []
        batch: list[tuple[int, ...]] = []
        speakers: set[int] = set()
        pending: deque[tuple[int, ...]] = deque()

        def try_add(group: tuple[int, ...]) -> bool:
            spk = int(self.labels[group[0]])
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
        spk = int(self.labels[group[0]])
        for start in range(0, len(out), self.batch_size):
            members = out[start:start + self.batch_size]
            if any(int(self.labels[m[0]]) == spk for m in members):
                continue
            for j, member in enumerate(members):
                if int(self.labels[member[0]]) not in speakers and try_add(member):
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
