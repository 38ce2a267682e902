"""Training and test datasets and the speaker-balanced sampler (voxceleb_trainer semantics).

A training item is ``nPerSpeaker`` random crops of ``max_frames`` frames of one speaker's files. Every crop position is
drawn from a generator seeded by (seed, epoch, position in the epoch), so an epoch is reproducible whatever the number
of workers; speed perturbation and augmentation run per crop in the workers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from augment import Augmenter
from config import Config
from dtdysv.data.audio import AudioError, load_crop, load_eval
from dtdysv.data.lists import DataError, TrainList, TrialList
from dtdysv.errors import UserError
from dtdysv.runtime.distributed import DistEnv
from dtdysv.runtime.setup import loader_workers

SPEEDS = (Fraction(1), Fraction(9, 10), Fraction(11, 10))  # speed perturbation, WeSpeaker's order (class offsets)

log = logging.getLogger(__name__)


class TrainDataset(Dataset):
    """Items (crops (nPerSpeaker, samples) float32, label) by the sampler's (indices, seed); with ``speed_perturb``
    speed k makes speaker s class ``s + k * n_speakers`` (WeSpeaker)."""

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
    """Items are (crops (num_eval, samples) float32, file index); ``trials`` (a list or several) lets errors name
    the first list line of the file."""

    def __init__(self, files: Sequence[str], test_path: str | Path, eval_frames: int, num_eval: int,
                 resample: bool = False, trials: TrialList | Sequence[TrialList] | None = None) -> None:
        self.files = list(files)
        self.root = Path(test_path)
        self.eval_frames = eval_frames
        self.num_eval = num_eval
        self.resample = resample
        self.trials = [trials] if isinstance(trials, TrialList) else list(trials or ())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = str(self.root / self.files[index])
        try:
            crops = load_eval(path, self.eval_frames, self.num_eval, self.resample)
        except AudioError as err:
            places = [t.where(self.files[index]) for t in self.trials]
            listed = [place for place in places if place.startswith("line ")]
            if not listed:
                raise
            raise AudioError(f"{err} It is first listed on {listed[0]}.") from None
        return torch.from_numpy(crops), index


class SpeakerBalancedSampler(Sampler):
    """voxceleb_trainer's sampler: ``batch_size`` speakers x ``nPerSpeaker`` utterances, no speaker twice per batch
    (clashing groups deferred, not dropped); rank r takes every ``world_size``-th batch. Yields ``(indices, seed)`` per
    group."""

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
        counts = np.bincount(self.labels, minlength=n_speakers)
        short = np.flatnonzero((counts > 0) & (counts < nPerSpeaker))
        if len(short) and rank == 0:
            log.warning("%d of the %d speakers of the train list have fewer than --nPerSpeaker %d utterances and are "
                        "never sampled (%d utterances unused); their labels (positions among the sorted speaker "
                        "ids): %s", len(short), n_speakers, nPerSpeaker, int(counts[short].sum()),
                        ", ".join(map(str, short[:5].tolist())) + (" ..." if len(short) > 5 else ""))
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


# Batches each DataLoader worker keeps ready: a GPU step is shorter than the jitter of reading and cropping a batch.
LOADER_PREFETCH = 4


def get_data_loader(train: TrainList, cfg: Config, env: DistEnv | None = None,
                    pin_memory: bool = False) -> tuple[DataLoader, SpeakerBalancedSampler]:
    """This rank's training loader and sampler, checked to give a batch per epoch and a head for every class."""
    env = env or DistEnv()
    augmenter = Augmenter(cfg.musan_path, cfg.rir_path, cfg.resample, cfg.aug_prob) if cfg.augment else None
    dataset = TrainDataset(train, cfg.max_frames, augmenter=augmenter, speed_perturb=cfg.speed_perturb,
                           resample=cfg.resample)
    if dataset.num_classes > cfg.nClasses:
        speeds = " x 3 speeds of --speed_perturb" if cfg.speed_perturb else ""
        raise UserError(f"The train list '{cfg.train_list}' has {len(train.speakers)} speakers{speeds}, "
                        f"{dataset.num_classes} classes, but --nClasses is {cfg.nClasses}; set --nClasses "
                        f"{dataset.num_classes}.")
    if cfg.nClasses > dataset.num_classes:
        log.warning("--nClasses %d is more than the %d classes of '%s': %d outputs of the head never train; set "
                    "--nClasses %d", cfg.nClasses, dataset.num_classes, cfg.train_list,
                    cfg.nClasses - dataset.num_classes, dataset.num_classes)
    sampler = SpeakerBalancedSampler(train.labels, cfg.nPerSpeaker, cfg.max_seg_per_spk, cfg.batch_size, cfg.seed,
                                     rank=env.rank, world_size=env.world_size)
    if sampler.batches_per_epoch() == 0:
        raise UserError(f"An epoch of '{cfg.train_list}' has no full batch of {cfg.batch_size} speakers x "
                        f"{cfg.nPerSpeaker} crops per process ({env.world_size} processes); lower --batch_size or "
                        f"--nPerSpeaker.")
    # Crop positions come from the sampler's seeds; the generator only keeps DataLoader off the global RNG.
    workers = loader_workers(cfg.nDataLoaderThread, env.local_world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=pin_memory, persistent_workers=workers > 0,
                        prefetch_factor=LOADER_PREFETCH if workers > 0 else None,
                        generator=torch.Generator().manual_seed(cfg.seed))
    return loader, sampler
