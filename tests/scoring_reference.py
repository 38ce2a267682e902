"""Trial-scoring helpers the tests use beside the production path of scoring.py: scoring of aligned trial tensors
(``score_trials``, on scoring's own paper-score kernel), L2 normalisation, and per-trial AS-norm / S-norm
(``as_norm``, ``s_norm``, on scoring's cohort statistics)."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dtdysv.evaluation.normalise import cohort_statistics
from dtdysv.evaluation.score import _check_protocol, _paper_scores


def normalize_embeddings(emb: Tensor, enabled: bool) -> Tensor:
    """L2-normalise over the last dim (e.g. (N, C, D) or (N, D)) when ``enabled``, else return ``emb``."""
    return F.normalize(emb, p=2, dim=-1) if enabled else emb


def _cosine_scores(enroll: Tensor, test: Tensor) -> Tensor:
    """Cosine similarity of the crop means: (n, Ce, D), (n, Ct, D) -> (n,)."""
    return (F.normalize(enroll.mean(1), dim=-1) * F.normalize(test.mean(1), dim=-1)).sum(-1)


@torch.no_grad()
def score_trials(enroll: Tensor, test: Tensor, protocol: str, chunk_size: int = 4096) -> Tensor:
    """Score trial pairs: enroll (N, Ce, D), test (N, Ct, D) (usually Ce = Ct = C) -> scores (N,).

    Works on ``chunk_size`` trials at a time, so memory is O(chunk_size * Ce * Ct) beyond the inputs.
    Embeddings are used as given (normalise them first with ``normalize_embeddings`` where the loss wants it).
    """
    _check_protocol(protocol)
    if enroll.dim() != 3 or test.dim() != 3:
        raise ValueError(f"enroll and test must be (N, C, D), got shapes {tuple(enroll.shape)}, {tuple(test.shape)}")
    if enroll.shape[0] != test.shape[0] or enroll.shape[2] != test.shape[2]:
        raise ValueError(
            f"enroll {tuple(enroll.shape)} and test {tuple(test.shape)} must agree in trials N and embedding size D"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    score_fn = _paper_scores if protocol == "paper" else _cosine_scores
    out = enroll.new_empty(enroll.shape[0])
    for start in range(0, enroll.shape[0], chunk_size):
        stop = start + chunk_size
        out[start:stop] = score_fn(enroll[start:stop], test[start:stop])
    return out


def _unique_rows(emb: Tensor, index: Tensor | None, n_trials: int, side: str) -> tuple[Tensor, Tensor]:
    """(unique embeddings (U, D), trial -> row (N,)): the given table and index, or deduplicated rows."""
    if index is None:
        if emb.dim() != 2 or emb.shape[0] != n_trials:
            raise ValueError(f"{side}_emb must be (N={n_trials}, D) without {side}_index, got {tuple(emb.shape)}")
        return torch.unique(emb, dim=0, return_inverse=True)
    if index.shape != (n_trials,):
        raise ValueError(f"{side}_index must be (N={n_trials},), got {tuple(index.shape)}")
    if n_trials and not 0 <= int(index.min()) <= int(index.max()) < emb.shape[0]:
        raise ValueError(f"{side}_index must index the {emb.shape[0]} rows of {side}_emb")
    return emb, index


def as_norm(
    scores: Tensor | np.ndarray,
    enroll_emb: Tensor,
    test_emb: Tensor,
    cohort: Tensor,
    top_n: int,
    enroll_index: Tensor | None = None,
    test_index: Tensor | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """Adaptive symmetric score normalisation -> normalised scores (N,).

    For each trial, 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t), where mu, sd are the mean and population std
    of the top_n highest cosine scores of the enrollment (e) / test (t) embedding against the cohort (M, D).
    scores (N,); enroll_emb, test_emb: (N, D) per trial, or (U, D) tables of unique files with enroll_index,
    test_index (N,) rows. Cohort statistics are computed once per unique file. The cohort scores are cosines, so
    the trial scores should be cosines too (protocol "cosine") for the normalisation to be meaningful.
    """
    s = torch.as_tensor(scores)
    if s.dim() != 1:
        raise ValueError(f"scores must be (N,), got {tuple(s.shape)}")
    stats = []
    for emb, index, side in ((enroll_emb, enroll_index, "enroll"), (test_emb, test_index, "test")):
        table, rows = _unique_rows(emb, index, s.shape[0], side)
        mean, std = cohort_statistics(table, cohort, top_n, chunk_size)
        rows = rows.to(mean.device)
        stats.append((mean[rows].to(s), std[rows].clamp_min(torch.finfo(std.dtype).eps).to(s)))
    (mean_e, std_e), (mean_t, std_t) = stats
    return 0.5 * ((s - mean_e) / std_e + (s - mean_t) / std_t)


def s_norm(
    scores: Tensor | np.ndarray,
    enroll_emb: Tensor,
    test_emb: Tensor,
    cohort: Tensor,
    enroll_index: Tensor | None = None,
    test_index: Tensor | None = None,
    chunk_size: int = 4096,
) -> Tensor:
    """Symmetric score normalisation: ``as_norm`` with the whole cohort (top_n = M)."""
    return as_norm(scores, enroll_emb, test_emb, cohort, cohort.shape[0], enroll_index, test_index, chunk_size)
