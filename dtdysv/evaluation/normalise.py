"""Score normalisation stages (``--score_norm asnorm|snorm``): the cohort stage (train list -> ``cohort.npz``) and
the norm stage (embeddings file + cohort file + trial lists -> ``<stem>.<norm>.txt`` beside the raw scores).

The cohort is one vector per training speaker (``--train_list``): the mean of the L2-normalised crop-mean
embeddings of ``norm_cohort_utts`` utterances spread over its list entries. Cohort scores are cosines, so the score
that is normalised is the cosine of the L2-normalised crop-mean embeddings of the two files: for ``whole`` that is
the raw score itself; for ``paper`` it is not the (distance) raw score but its cosine counterpart, and metrics.json
says so ("score"). AS-norm: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t), mu and sd over each file's ``norm_top_n``
highest cohort scores; S-norm: over the whole cohort.

``--mean_subtraction`` subtracts the training-set mean embedding, the mean of the cohort files' crop means (crops
L2-normalised first when the loss says so), from every file's crop mean before it is L2-normalised, for the test
files and the cohort files alike. cohort.npz holds 'names' (M speakers), 'embeddings' (M, D) the cohort without
mean subtraction, 'file_means' (U, D) the crop means of its U files and 'owner' (U,) their speakers, from which
either cohort is computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from dtdysv.data.lists import TrialList, read_train_list
from dtdysv.evaluation.embed import EvalError, differences, embed_files, identity, load_npz, save_npz
from dtdysv.evaluation.score import (
    check_finite,
    cohort_statistics,
    norm_with_statistics,
    score_stems,
    score_trial_list,
    write_scores,
)
from SpeakerNet import Embedder

log = logging.getLogger(__name__)

NORMS = ("asnorm", "snorm")
NORM_SCORE = "cosine of the L2-normalised crop-mean embeddings"


def crop_means(table: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) mean of the crops, each L2-normalised first if ``normalize``."""
    return (F.normalize(table, dim=-1) if normalize else table).mean(1)


def file_vectors(table: torch.Tensor, normalize: bool, mean: torch.Tensor | None = None) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) unit vectors: the ``crop_means`` less the training-set ``mean`` (D,)
    (--mean_subtraction; None: nothing subtracted), L2-normalised."""
    means = crop_means(table, normalize)
    return F.normalize(means if mean is None else means - mean.to(means), dim=-1)


def speaker_vectors(file_means: torch.Tensor, owner: torch.Tensor, n_speakers: int,
                    mean: torch.Tensor | None = None) -> torch.Tensor:
    """The cohort: (n_speakers, D), each speaker's mean of its files' unit vectors; file_means (U, D) the
    ``crop_means`` of the cohort files, owner (U,) their speakers, ``mean`` as for ``file_vectors``."""
    vectors = F.normalize(file_means if mean is None else file_means - mean.to(file_means), dim=-1)
    cohort = torch.zeros(n_speakers, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    cohort.index_add_(0, owner.to(vectors.device), vectors)
    return cohort / torch.bincount(owner, minlength=n_speakers).to(cohort).unsqueeze(1)


def cohort_file_means(cohort_arrays: dict[str, np.ndarray], cohort_file: Path) -> torch.Tensor:
    """The (U, D) ``crop_means`` of the cohort files stored in a cohort file."""
    if "file_means" not in cohort_arrays:
        raise EvalError(f"The cohort file '{cohort_file}' has no per-file means (an older version): run --eval "
                        f"without --score_from_cache to rebuild it.")
    return torch.from_numpy(cohort_arrays["file_means"])


def train_mean(cohort_arrays: dict[str, np.ndarray], cohort_file: Path) -> torch.Tensor:
    """The training-set mean embedding (D,) of --mean_subtraction: the mean of the cohort files' ``crop_means``."""
    return cohort_file_means(cohort_arrays, cohort_file).double().mean(0).float()


def cohort_identity(cfg: Config, weights: str | None, normalize: bool | None) -> dict[str, Any]:
    """What a cohort file must agree on to be reused (None: any)."""
    return {**identity(cfg, weights), "cohort_version": 2, "train_list": str(Path(cfg.train_list).resolve()),
            "norm_cohort_utts": cfg.norm_cohort_utts, "test_normalize": normalize}


def load_cohort(cohort_file: Path, why: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a cohort file; ``why`` (the option that needs it) names it in the error if absent."""
    found = load_npz(cohort_file)
    if found is None:
        raise EvalError(f"{why} needs the cohort file '{cohort_file}', which does not exist: run --eval (it writes "
                        f"it from --train_list).")
    return found


def cohort_stage(embedder: Embedder, cfg: Config, path: Path, weights: str, normalize: bool,
                 show_progress: bool = True) -> None:
    """Make ``path`` hold the (M, nOut) speaker vectors of the cohort (see the module docstring); a fitting file
    is kept. Under DDP every rank takes part in the embedding and rank 0 writes."""
    train_list = Path(cfg.train_list)
    stat = train_list.stat() if train_list.is_file() else None
    expected = {**cohort_identity(cfg, weights, normalize),
                "train_list_stat": [stat.st_size, stat.st_mtime_ns] if stat else None,
                "train_path": str(Path(cfg.train_path).resolve())}
    found = load_npz(path)
    if found is not None:
        problems = differences(found[0], expected)
        if not problems:
            log.info("reusing the cached cohort of %d speakers from '%s'", found[1]["embeddings"].shape[0], path)
            return
        log.info("cohort cache '%s' does not fit (%s): embedding again", path, "; ".join(problems))
    train = read_train_list(cfg.train_list, cfg.train_path)
    order = np.argsort(train.labels, kind="stable")  # list order within each speaker
    bounds = np.searchsorted(train.labels[order], np.arange(len(train.speakers) + 1))
    chosen, owner = [], []
    for spk in range(len(train.speakers)):
        members = order[bounds[spk]:bounds[spk + 1]]
        picks = np.unique(np.linspace(0, len(members) - 1, min(cfg.norm_cohort_utts, len(members))).round())
        chosen += [train.files[i] for i in members[picks.astype(np.int64)]]
        owner += [spk] * len(picks)
    means = crop_means(embed_files(embedder, chosen, "", cfg, show_progress, "cohort files"), normalize)
    owner_t = torch.tensor(owner, dtype=torch.long)
    cohort = speaker_vectors(means, owner_t, len(train.speakers))
    if embedder.env.is_main:
        save_npz(path, {**expected, "n_speakers": len(train.speakers)}, names=np.array(train.speakers),
                 embeddings=cohort.numpy(), file_means=means.numpy(), owner=owner_t.numpy())


class FileStatistics(NamedTuple):
    """Every embedded file's unit vector and cohort statistics: index {file: row}, vectors (F, D), mean and std
    (F,) of its top_n cosine scores against the cohort."""

    index: dict[str, int]
    vectors: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    top_n: int
    cohort_speakers: int
    cohort_meta: dict[str, Any]


def file_statistics(embeddings_file: Path, cohort_file: Path, method: str, top_n: int, mean_subtraction: bool,
                    device: torch.device) -> FileStatistics:
    """The cohort statistics of every file of the embeddings file (``method`` asnorm: its ``top_n`` highest
    cohort scores; snorm: the whole cohort), with the training-set mean subtracted if ``mean_subtraction``."""
    if method not in NORMS:
        raise EvalError(f"Unknown score normalisation {method!r}; valid: {', '.join(NORMS)}.")
    found = load_npz(embeddings_file)
    if found is None:
        raise EvalError(f"--score_norm {method} needs the embeddings file '{embeddings_file}', which does not exist.")
    (meta, arrays), (cohort_meta, cohort_arrays) = found, load_cohort(cohort_file, f"--score_norm {method}")
    mean = train_mean(cohort_arrays, cohort_file).to(device) if mean_subtraction else None
    cohort = speaker_vectors(cohort_file_means(cohort_arrays, cohort_file).to(device),
                             torch.from_numpy(cohort_arrays["owner"]), len(cohort_arrays["names"]), mean)
    top_n = cohort.shape[0] if method == "snorm" else top_n
    if not 2 <= top_n <= cohort.shape[0]:
        raise EvalError(f"--norm_top_n {top_n} needs a cohort of at least that many (and 2) speakers; "
                        f"--train_list '{cohort_meta.get('train_list')}' has {cohort.shape[0]}. Lower --norm_top_n, "
                        f"or use --score_norm snorm (the whole cohort).")
    index = {name: i for i, name in enumerate(arrays["names"].tolist())}
    vectors = file_vectors(torch.from_numpy(arrays["embeddings"]).to(device), bool(meta.get("test_normalize", True)),
                           mean)
    file_mean, file_std = cohort_statistics(vectors, cohort, top_n)  # (F,) each
    return FileStatistics(index, vectors, file_mean, file_std, top_n, cohort.shape[0], cohort_meta)


def norm_stage(embeddings_file: Path, cohort_file: Path, trial_lists: Sequence[TrialList], result_dir: Path,
               method: str, top_n: int, device: torch.device, mean_subtraction: bool = False) -> dict[str, dict]:
    """Normalise the cosine scores of every list (``method`` asnorm with the ``top_n`` highest cohort scores, or
    snorm with the whole cohort; the training-set mean subtracted first if ``mean_subtraction``) into
    ``<result_dir>/<stem>.<method>.txt``; returns each list's description (method, score, top_n, cohort_speakers,
    cohort_utts_per_speaker, mean_subtraction, n_trials, scores_file)."""
    stats = file_statistics(embeddings_file, cohort_file, method, top_n, mean_subtraction, device)
    entries = {}
    for trials, (name, stem) in zip(trial_lists, score_stems(trial_lists).items(), strict=True):
        pairs = list(zip(trials.enroll, trials.test, strict=True))
        cosine = torch.from_numpy(score_trial_list((stats.index, stats.vectors), pairs, "cosine")).to(device)
        rows = [torch.tensor([stats.index[f] for f in side], dtype=torch.long, device=device)
                for side in (trials.enroll, trials.test)]
        normed = norm_with_statistics(cosine, stats.mean, stats.std, *rows).cpu().numpy()
        check_finite(normed, trials)
        write_scores(result_dir / f"{stem}.{method}.txt", normed, trials)
        entries[name] = {"method": method, "score": NORM_SCORE, "top_n": stats.top_n,
                         "cohort_speakers": stats.cohort_speakers,
                         "cohort_utts_per_speaker": stats.cohort_meta.get("norm_cohort_utts"),
                         "mean_subtraction": mean_subtraction, "n_trials": len(normed),
                         "scores_file": f"{stem}.{method}.txt"}
    return entries
