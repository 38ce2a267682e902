"""Trial scoring: the maths (pure torch, no model, no device choice), the score files, and the score stage
(embeddings file + trial lists -> score files).

Scoring protocols (``PROTOCOLS``):
- "paper": the score of voxceleb_trainer and of DTDY-CNN (Kim, Nam, Park, "Decomposed Temporal Dynamic CNN",
  arXiv 2203.15277): minus the mean Euclidean distance over all C x C pairs of enrollment and test crops.
- "cosine": cosine similarity of the crop-mean embeddings (the whole-utterance protocol uses C = 1).

The "paper" score is computed with ||e - t||^2 = |e|^2 + |t|^2 - 2 e.t (one batched matrix product per chunk of
trials) in the precision of the inputs (float32 embeddings: float32); pairs whose squared distance is below
``NEAR_DISTANCE`` times |e|^2 + |t|^2, where that form loses its precision to cancellation, are recomputed as direct
differences. ``score_trial_list`` gathers the embeddings of a few hundred trials at a time into reused buffers that
stay in cache, which is what makes scoring fast (VoxCeleb1-O, 37,611 trials x 10 x 10 crops: ~0.5 s on one
busy CPU core, 17x faster than gathering all trials in float64; bench/eval_speed.py).

Score normalisation maths (``cohort_statistics``, ``norm_with_statistics``): AS-norm (adaptive, top-N cohort) and
S-norm (whole cohort), with cosine scores against the cohort, as in WeSpeaker (normalisation.py runs them). The
maths runs on the device of the tensors it is given.

A score file has one line per trial, 'score label enroll test' ('score enroll test' for an unlabeled list), the
score with 6 decimals; the metrics are computed from the files as written, so they can be recomputed from them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dtdysv.data.lists import TrialList
from dtdysv.evaluation.embed import EvalError, load_npz, protocol_of
from dtdysv.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)

PROTOCOLS = ("paper", "cosine")

EmbeddingTable = Mapping[str, Tensor] | tuple[Mapping[str, int], Tensor]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")


NEAR_DISTANCE = 1e-2  # relative squared distance below which a pair is recomputed as a direct difference


def _paper_scores(enroll: Tensor, test: Tensor, sq_e: Tensor | None = None, sq_t: Tensor | None = None) -> Tensor:
    """-mean_ij ||e_i - t_j|| for (n, Ce, D), (n, Ct, D) -> (n,), in the dtype of the inputs.

    ||e - t||^2 = |e|^2 + |t|^2 - 2 e.t by a batched matrix product; its rounding error is a few ulp of
    |e|^2 + |t|^2, harmless for the usual distances but not for (near-)identical crops, whose residue of ~1e-7
    would become ~3e-4 after the square root. Those pairs (squared distance < NEAR_DISTANCE (|e|^2 + |t|^2), i.e.
    cosine > 0.99 for unit vectors) are recomputed directly; they are rare, so the cost is that of the product.
    """
    sq_e = enroll.pow(2).sum(-1) if sq_e is None else sq_e  # (n, Ce) squared norms
    sq_t = test.pow(2).sum(-1) if sq_t is None else sq_t  # (n, Ct)
    norms = sq_e[:, :, None] + sq_t[:, None, :]  # (n, Ce, Ct)
    dist2 = torch.baddbmm(norms, enroll, test.transpose(1, 2), alpha=-2.0)
    near = dist2 < NEAR_DISTANCE * norms
    if near.any():
        trial, i, j = near.nonzero(as_tuple=True)
        dist2[trial, i, j] = (enroll[trial, i] - test[trial, j]).pow(2).sum(-1)
    return -dist2.clamp_min_(0.0).sqrt_().mean(dim=(1, 2))  # (n, Ce, Ct) -> (n,)


def _as_index_and_stack(embeddings: EmbeddingTable) -> tuple[Mapping[str, int], Tensor]:
    """(file -> row, (F, C, D) tensor) from a dict of (C, D) or (D,) tensors or an (index, stacked) pair."""
    if isinstance(embeddings, Mapping):
        names = list(embeddings)
        if not names:
            raise ValueError("no embeddings given")
        shape = embeddings[names[0]].shape
        for name in names:
            if embeddings[name].shape != shape:
                raise ValueError(
                    f"embedding of {name!r} has shape {tuple(embeddings[name].shape)}, expected {tuple(shape)} "
                    f"like {names[0]!r}: all files need the same number of crops and size"
                )
        index: Mapping[str, int] = {name: i for i, name in enumerate(names)}
        stacked = torch.stack([embeddings[name] for name in names])
    else:
        index, stacked = embeddings
    if stacked.dim() == 2:  # whole-utterance embeddings (F, D): one crop each
        stacked = stacked.unsqueeze(1)
    if stacked.dim() != 3:
        raise ValueError(f"stacked embeddings must be (files, C, D) or (files, D), got {tuple(stacked.shape)}")
    return index, stacked


def _lookup(index: Mapping[str, int], names: Sequence[str], side: str) -> Tensor:
    try:
        return torch.tensor([index[name] for name in names], dtype=torch.long)
    except KeyError as err:
        i = next(i for i, name in enumerate(names) if name not in index)
        raise ValueError(f"trial {i}: {side} file {names[i]!r} has no embedding ({len(index)} files embedded)") from err


@torch.no_grad()
def score_trial_list(
    embeddings: EmbeddingTable, pairs: Sequence[tuple[str, str]], protocol: str, batch_size: int = 256
) -> np.ndarray:
    """Score (enroll file, test file) pairs -> float64 scores (len(pairs),).

    embeddings: {file: (C, D) or (D,) tensor} or (index {file: row}, stacked (files, C, D) or (files, D)).
    "cosine": the crop means are normalised once per file, then each trial is one dot product. "paper": the crops
    of ``batch_size`` trials at a time are gathered into two reused buffers (small enough to stay in cache) and
    scored by ``_paper_scores`` (squared norms computed once per file); the result does not depend on
    ``batch_size``.
    """
    _check_protocol(protocol)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index, stacked = _as_index_and_stack(embeddings)
    enroll_idx = _lookup(index, [enroll for enroll, _ in pairs], "enroll").to(stacked.device)
    test_idx = _lookup(index, [test for _, test in pairs], "test").to(stacked.device)
    if protocol == "cosine":
        means = F.normalize(stacked.mean(1), dim=-1)  # (files, D)
        out = stacked.new_empty(len(pairs))
        for start in range(0, len(pairs), 4096):
            rows = slice(start, start + 4096)
            out[rows] = (means.index_select(0, enroll_idx[rows]) * means.index_select(0, test_idx[rows])).sum(-1)
        return out.cpu().double().numpy()
    sq = stacked.pow(2).sum(-1)  # (files, C) squared norms, once per file
    out = stacked.new_empty(len(pairs))
    size = min(batch_size, len(pairs))
    enroll_buf = stacked.new_empty((size, *stacked.shape[1:]))
    test_buf = stacked.new_empty((size, *stacked.shape[1:]))
    for start in range(0, len(pairs), batch_size):
        rows = slice(start, min(start + batch_size, len(pairs)))
        e_rows, t_rows = enroll_idx[rows], test_idx[rows]
        enroll = torch.index_select(stacked, 0, e_rows, out=enroll_buf[: e_rows.numel()])
        test = torch.index_select(stacked, 0, t_rows, out=test_buf[: t_rows.numel()])
        out[rows] = _paper_scores(enroll, test, sq.index_select(0, e_rows), sq.index_select(0, t_rows))
    return out.cpu().double().numpy()


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


# ---- score files and the score stage ------------------------------------------------------------------------------


@dataclass
class ScoreFile:
    """The trials of a score file: scores (N,) float64, labels (N,) int64 or None (unlabeled), file names."""

    scores: np.ndarray
    labels: np.ndarray | None
    enroll: list[str]
    test: list[str]


def write_scores(path: Path, scores: np.ndarray, trials: TrialList) -> None:
    """One line per trial: 'score label enroll test' (no label column for an unlabeled list), atomically."""
    if trials.labels is None:
        lines = [f"{s:.6f} {e} {t}" for s, e, t in zip(scores, trials.enroll, trials.test, strict=True)]
    else:
        lines = [f"{s:.6f} {lab} {e} {t}"
                 for s, lab, e, t in zip(scores, trials.labels, trials.enroll, trials.test, strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_scores(path: Path) -> ScoreFile:
    """A score file of ``write_scores``."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    width = {len(r) for r in rows}
    if not rows or len(width) != 1 or width.pop() not in (3, 4):
        raise EvalError(f"Score file '{path}' must have 'score label enroll test' or 'score enroll test' lines, the "
                        f"same on every line.")
    labeled = len(rows[0]) == 4
    return ScoreFile(np.array([float(r[0]) for r in rows]), np.array([int(r[1]) for r in rows]) if labeled else None,
                     [r[-2] for r in rows], [r[-1] for r in rows])


def list_names(trial_lists: Sequence[TrialList]) -> list[str]:
    """A distinct name per list: the file stem, with _2, _3 ... for repeats."""
    names: list[str] = []
    for trials in trial_lists:
        base = Path(trials.path).stem or "list"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def score_stems(trial_lists: Sequence[TrialList]) -> dict[str, str]:
    """List name -> score file stem: 'scores' for the first list, 'scores_<name>' for every further one."""
    return {name: "scores" if i == 0 else f"scores_{name}" for i, name in enumerate(list_names(trial_lists))}


def check_finite(scores: np.ndarray, trials: TrialList) -> None:
    if not np.isfinite(scores).all():
        raise EvalError(f"{int((~np.isfinite(scores)).sum())} of {len(scores)} scores of '{trials.path}' are not "
                        f"finite: the model's embeddings contain NaN or inf (diverged or corrupt weights?).")


def score_stage(embeddings_file: Path, trial_lists: Sequence[TrialList], result_dir: Path,
                device: torch.device, mean: Tensor | None = None) -> dict[str, dict]:
    """Score every list from the embeddings file (by the protocol it records) into ``<result_dir>/<stem>.txt``.

    ``mean`` (D,): the training-set mean embedding (--mean_subtraction), subtracted from every crop as the scoring
    sees it (L2-normalised if the loss says so), which is then L2-normalised again if the loss says so.
    Returns each list's description for metrics.json: test_list, protocol, protocol_detail, mean_subtraction,
    n_files, n_trials, scores_file. Every file of the lists must be in the embeddings file (``ValueError`` names
    one that is not).
    """
    found = load_npz(embeddings_file)
    if found is None:
        raise EvalError(f"There is no embeddings file '{embeddings_file}' to score from; run --eval to write it.")
    meta, arrays = found
    proto = protocol_of(int(meta["eval_frames"]), int(meta["num_eval"]))
    index = {name: i for i, name in enumerate(arrays["names"].tolist())}
    table = torch.from_numpy(arrays["embeddings"]).to(device)
    normalize = bool(meta.get("test_normalize", True))
    crops = F.normalize(table, dim=-1) if normalize else table
    detail = proto["detail"]
    if mean is not None:
        crops = crops - mean.to(crops)
        crops = F.normalize(crops, dim=-1) if normalize else crops
        detail += ", after subtracting the training-set mean embedding"
    batch = 256 if device.type == "cpu" else 4096
    entries = {}
    for trials, (name, stem) in zip(trial_lists, score_stems(trial_lists).items(), strict=True):
        start = time.perf_counter()
        scores = score_trial_list((index, crops), list(zip(trials.enroll, trials.test, strict=True)),
                                  proto["scoring"], batch_size=batch)
        seconds = time.perf_counter() - start
        check_finite(scores, trials)
        write_scores(result_dir / f"{stem}.txt", scores, trials)
        log.info("%s: %d trials scored in %.2f s -> %s", name, len(scores), seconds, result_dir / f"{stem}.txt")
        entries[name] = {"test_list": trials.path, "protocol": proto["name"], "protocol_detail": detail,
                         "mean_subtraction": mean is not None, "n_files": len(trials.files), "n_trials": len(scores),
                         "scores_file": f"{stem}.txt"}
    return entries
