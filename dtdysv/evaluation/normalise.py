"""Score normalisation (``--score_norm asnorm|snorm``, as in WeSpeaker): the maths, the cohort stage (train list ->
``cohort.npz``) and the norm stage (-> ``<stem>.<norm>.txt``).

Cohort: per training speaker, the mean unit crop-mean embedding of ``norm_cohort_utts`` utterances. Normalised scores
are cosines of unit crop means. AS-norm: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t) over each file's ``norm_top_n``
highest cohort scores; S-norm: the whole cohort. cohort.npz: 'names' (M,), 'embeddings' (M, D), 'file_means' (U, D),
'owner' (U,).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from config import Config
from dtdysv.data.lists import read_train_list
from dtdysv.evaluation.embed import embed_files
from dtdysv.evaluation.results import (
    EvalError,
    EvalRun,
    ListResult,
    ScoreNorm,
    ScoreSet,
    check_finite,
    differences,
    identity,
    load_npz,
    save_npz,
    write_scores,
)
from dtdysv.evaluation.score import score_trial_list
from SpeakerNet import Embedder

log = logging.getLogger(__name__)

NORM_SCORE = "cosine of the L2-normalised crop-mean embeddings"


def crop_means(table: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) mean of the crops, each L2-normalised first if ``normalize``."""
    return (F.normalize(table, dim=-1) if normalize else table).mean(1)


def file_vectors(table: torch.Tensor, normalize: bool, mean: torch.Tensor | None = None) -> torch.Tensor:
    """(F, C, D) crops -> (F, D) unit vectors of the crop means less ``mean`` (D,) (None: nothing)."""
    means = crop_means(table, normalize)
    return F.normalize(means if mean is None else means - mean.to(means), dim=-1)


def speaker_vectors(file_means: torch.Tensor, owner: torch.Tensor, n_speakers: int,
                    mean: torch.Tensor | None = None) -> torch.Tensor:
    """The cohort (n_speakers, D): each speaker's mean of the unit vectors of its file_means (U, D), owner (U,)."""
    vectors = F.normalize(file_means if mean is None else file_means - mean.to(file_means), dim=-1)
    cohort = torch.zeros(n_speakers, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    cohort.index_add_(0, owner.to(vectors.device), vectors)
    return cohort / torch.bincount(owner, minlength=n_speakers).to(cohort).unsqueeze(1)


def cohort_identity(cfg: Config, weights: str | None, normalize: bool | None) -> dict[str, Any]:
    """What a cohort file must agree on to be reused (None: any)."""
    return {**identity(cfg, weights), "cohort_version": 2, "train_list": str(Path(cfg.train_list).resolve()),
            "norm_cohort_utts": cfg.norm_cohort_utts, "test_normalize": normalize}


def check_cohort_size(cfg: Config, n_speakers: int) -> None:
    """Refuse an AS-norm that needs more cohort speakers (--norm_top_n) than the train list has, before any work."""
    if ScoreNorm(cfg.score_norm) == ScoreNorm.ASNORM and not 2 <= cfg.norm_top_n <= n_speakers:
        raise EvalError(f"--norm_top_n {cfg.norm_top_n} needs a cohort of at least that many (and 2) speakers; "
                        f"--train_list '{cfg.train_list}' has {n_speakers}. Lower --norm_top_n (e.g. "
                        f"{max(2, n_speakers // 3)}), or use --score_norm snorm (the whole cohort).")


def cohort_stage(run: EvalRun, embedder: Embedder, weights: str, normalize: bool, show_progress: bool = True) -> None:
    """Make cohort.npz hold the (M, nOut) cohort, keeping a fitting file; all DDP ranks embed, rank 0 writes."""
    cfg, path = run.cfg, run.cohort_file
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
    check_cohort_size(cfg, len(train.speakers))
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


@torch.no_grad()
def cohort_statistics(emb: Tensor, cohort: Tensor, top_n: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and population std (U,) of each of emb (U, D)'s top_n cosines against cohort (M, D); top_n = M: the whole
    cohort."""
    if emb.dim() != 2 or cohort.dim() != 2 or emb.shape[1] != cohort.shape[1]:
        raise ValueError(f"need emb (U, D) and cohort (M, D), got {tuple(emb.shape)} and {tuple(cohort.shape)}")
    if not 2 <= top_n <= cohort.shape[0]:
        raise ValueError(f"top_n must be in [2, cohort size {cohort.shape[0]}], got {top_n}")
    cohort_t = F.normalize(cohort, dim=-1).T  # (D, M)
    means, stds = [], []
    for start in range(0, emb.shape[0], chunk_size):
        sims = F.normalize(emb[start : start + chunk_size], dim=-1) @ cohort_t  # (u, M)
        if top_n < cohort.shape[0]:
            sims = sims.topk(top_n, dim=1, sorted=False).values  # (u, top_n)
        std, mean = torch.std_mean(sims, dim=1, correction=0)
        means.append(mean)
        stds.append(std)
    return torch.cat(means), torch.cat(stds)


def norm_with_statistics(
    scores: Tensor | np.ndarray, mean: Tensor, std: Tensor, enroll_index: Tensor, test_index: Tensor
) -> Tensor:
    """AS-/S-norm of scores (N,) from per-file mean, std (F,) and trials' enroll_index, test_index (N,) -> (N,) in the
    dtype of ``scores``."""
    s = torch.as_tensor(scores)
    std = std.clamp_min(torch.finfo(std.dtype).eps)
    mean_e, std_e = mean[enroll_index].to(s), std[enroll_index].to(s)
    mean_t, std_t = mean[test_index].to(s), std[test_index].to(s)
    return 0.5 * ((s - mean_e) / std_e + (s - mean_t) / std_t)


class FileStatistics(NamedTuple):
    """Per embedded file: index {file: row}, unit vectors (F, D), mean and std (F,) of its cohort scores."""

    index: dict[str, int]
    vectors: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    top_n: int
    cohort_speakers: int
    cohort_meta: dict[str, Any]


def file_statistics(run: EvalRun) -> FileStatistics:
    """The cohort statistics of every file of embeddings.npz (mean-subtracted under --mean_subtraction)."""
    method, device = run.score_norm, run.device
    if method == ScoreNorm.NONE:
        raise EvalError("Cohort statistics need --score_norm asnorm or snorm.")
    why = f"--score_norm {method}"
    (meta, arrays), (cohort_meta, cohort_arrays) = run.embeddings(why), run.cohort(why)
    mean = run.train_mean().to(device) if run.cfg.mean_subtraction else None
    cohort = speaker_vectors(torch.from_numpy(cohort_arrays["file_means"]).to(device),
                             torch.from_numpy(cohort_arrays["owner"]), len(cohort_arrays["names"]), mean)
    top_n = cohort.shape[0] if method == ScoreNorm.SNORM else run.cfg.norm_top_n
    if not 2 <= top_n <= cohort.shape[0]:
        raise EvalError(f"--norm_top_n {top_n} needs a cohort of at least that many (and 2) speakers; "
                        f"--train_list '{cohort_meta.get('train_list')}' has {cohort.shape[0]}. Lower --norm_top_n, "
                        f"or use --score_norm snorm (the whole cohort).")
    index = {name: i for i, name in enumerate(arrays["names"].tolist())}
    vectors = file_vectors(torch.from_numpy(arrays["embeddings"]).to(device), bool(meta.get("test_normalize", True)),
                           mean)
    file_mean, file_std = cohort_statistics(vectors, cohort, top_n)  # (F,) each
    return FileStatistics(index, vectors, file_mean, file_std, top_n, cohort.shape[0], cohort_meta)


def norm_stage(run: EvalRun, lists: list[ListResult]) -> None:
    """Normalise every list's cosine scores into ``<stem>.<norm>.txt`` (``ListResult.norm``)."""
    stats = file_statistics(run)
    method = str(run.score_norm)
    for item in lists:
        trials = item.trials
        pairs = list(zip(trials.enroll, trials.test, strict=True))
        cosine = torch.from_numpy(score_trial_list((stats.index, stats.vectors), pairs, "cosine")).to(run.device)
        rows = [torch.tensor([stats.index[f] for f in side], dtype=torch.long, device=run.device)
                for side in (trials.enroll, trials.test)]
        normed = norm_with_statistics(cosine, stats.mean, stats.std, *rows).cpu().numpy()
        check_finite(normed, trials)
        path = run.result_dir / f"{item.stem}.{method}.txt"
        write_scores(path, normed, trials)
        item.norm = ScoreSet(path.name, {"method": method, "score": NORM_SCORE, "top_n": stats.top_n,
                                         "cohort_speakers": stats.cohort_speakers,
                                         "cohort_utts_per_speaker": stats.cohort_meta.get("norm_cohort_utts"),
                                         "mean_subtraction": run.cfg.mean_subtraction, "n_trials": len(normed)})
