"""The maths of score normalisation against a cohort (AS-norm, S-norm) and of embedding mean subtraction, shared
by the evaluation stages (normalise.py, calibrate.py) and the inference API (dtdysv/api.py): pure torch, no files.

A file's vector is the cosine-ready unit vector of its crop-mean embedding. Under ``--mean_subtraction`` the
training-set mean of the raw embeddings is subtracted from every raw crop embedding first, as WeSpeaker subtracts the
mean of its raw training embeddings before the cosine; the cohort is one such vector per training speaker;
AS-norm (top_n cohort scores per file) and S-norm (the whole cohort) standardise a trial's cosine by both files'
cohort statistics (WeSpeaker's score_norm.py; Matejka et al., "Analysis of score normalization in multilingual
speaker recognition", Interspeech 2017).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def crop_means(table: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) mean of the crops, each L2-normalised first if ``normalize``."""
    return (F.normalize(table, dim=-1) if normalize else table).mean(1)


def centre(table: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """Raw embeddings (..., D) less the training-set ``mean`` (D,) of the raw embeddings (None: unchanged)."""
    return table if mean is None else table - mean.to(table)


def file_vectors(table: torch.Tensor, normalize: bool, mean: torch.Tensor | None = None) -> torch.Tensor:
    """(F, C, D) raw crop embeddings -> (F, D) unit vectors: the ``crop_means`` of the crops less the training-set
    ``mean`` (D,) (--mean_subtraction; None: nothing subtracted), L2-normalised."""
    return F.normalize(crop_means(centre(table, mean), normalize), dim=-1)


def raw_mean(raw_means: torch.Tensor) -> torch.Tensor:
    """The training-set mean (D,) of --mean_subtraction: the mean of the cohort files' raw crop means (U, D), summed
    in float64."""
    return raw_means.double().mean(0).float()


def speaker_vectors(file_means: torch.Tensor, owner: torch.Tensor, n_speakers: int) -> torch.Tensor:
    """The cohort: (n_speakers, D), each speaker's mean of its files' unit vectors; file_means (U, D) the
    ``crop_means`` of the cohort files (of their centred crops under --mean_subtraction), owner (U,) their
    speakers."""
    vectors = F.normalize(file_means, dim=-1)
    cohort = torch.zeros(n_speakers, vectors.shape[1], dtype=vectors.dtype, device=vectors.device)
    cohort.index_add_(0, owner.to(vectors.device), vectors)
    return cohort / torch.bincount(owner, minlength=n_speakers).to(cohort).unsqueeze(1)


@torch.no_grad()
def cohort_statistics(emb: Tensor, cohort: Tensor, top_n: int, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and (population) std of each embedding's top_n cosine scores against the cohort.

    emb (U, D), cohort (M, D) -> mean (U,), std (U,); top_n = M uses the whole cohort.
    """
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
    """AS-norm / S-norm with cohort statistics computed once per file (``cohort_statistics`` of a file table).

    scores (N,); mean, std (F,) of each file's cohort scores; enroll_index, test_index (N,) rows of each trial's
    files -> 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t), (N,), in the dtype of ``scores``.
    """
    s = torch.as_tensor(scores)
    std = std.clamp_min(torch.finfo(std.dtype).eps)
    mean_e, std_e = mean[enroll_index].to(s), std[enroll_index].to(s)
    mean_t, std_t = mean[test_index].to(s), std[test_index].to(s)
    return 0.5 * ((s - mean_e) / std_e + (s - mean_t) / std_t)
