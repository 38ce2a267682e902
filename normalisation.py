"""Score normalisation stages (``--score_norm asnorm|snorm``): the cohort stage (train list -> ``cohort.npz``) and
the norm stage (embeddings file + cohort file + trial lists -> ``<stem>.<norm>.txt`` beside the raw scores).

The cohort is one vector per training speaker (``--train_list``): the mean of the L2-normalised crop-mean
embeddings of ``norm_cohort_utts`` utterances spread over its list entries. Cohort scores are cosines, so the score
that is normalised is the cosine of the L2-normalised crop-mean embeddings of the two files: for ``whole`` that is
the raw score itself; for ``paper`` it is not the (distance) raw score but its cosine counterpart, and metrics.json
says so ("score"). AS-norm: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t), mu and sd over each file's ``norm_top_n``
highest cohort scores; S-norm: over the whole cohort.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from datalists import TrialList, read_train_list
from embedder import Embedder
from embedding import EvalError, differences, embed_files, identity, load_npz, save_npz
from scoring import check_finite, cohort_statistics, norm_with_statistics, score_stems, score_trial_list, write_scores

log = logging.getLogger(__name__)

NORMS = ("asnorm", "snorm")
NORM_SCORE = "cosine of the L2-normalised crop-mean embeddings"


def file_vectors(table: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) unit vectors: L2-normalised (if ``normalize``) crops, mean, normalised."""
    crops = F.normalize(table, dim=-1) if normalize else table
    return F.normalize(crops.mean(1), dim=-1)


def cohort_identity(cfg: Config, weights: str | None, normalize: bool | None) -> dict[str, Any]:
    """What a cohort file must agree on to be reused (None: any)."""
    return {**identity(cfg, weights), "train_list": str(Path(cfg.train_list).resolve()),
            "norm_cohort_utts": cfg.norm_cohort_utts, "test_normalize": normalize}


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
    vectors = file_vectors(embed_files(embedder, chosen, "", cfg, show_progress, "cohort files"), normalize)
    owner_t = torch.tensor(owner)
    cohort = torch.zeros(len(train.speakers), vectors.shape[1]).index_add_(0, owner_t, vectors)
    cohort /= torch.bincount(owner_t, minlength=len(train.speakers)).unsqueeze(1)
    if embedder.env.is_main:
        save_npz(path, {**expected, "n_speakers": len(train.speakers)}, names=np.array(train.speakers),
                 embeddings=cohort.numpy())


def norm_stage(embeddings_file: Path, cohort_file: Path, trial_lists: Sequence[TrialList], result_dir: Path,
               method: str, top_n: int, device: torch.device) -> dict[str, dict]:
    """Normalise the cosine scores of every list (``method`` asnorm with the ``top_n`` highest cohort scores, or
    snorm with the whole cohort) into ``<result_dir>/<stem>.<method>.txt``; returns each list's description
    (method, score, top_n, cohort_speakers, cohort_utts_per_speaker, n_trials, scores_file)."""
    if method not in NORMS:
        raise EvalError(f"Unknown score normalisation {method!r}; valid: {', '.join(NORMS)}.")
    files = {"embeddings": load_npz(embeddings_file), "cohort": load_npz(cohort_file)}
    for what, found in files.items():
        if found is None:
            raise EvalError(f"--score_norm {method} needs the {what} file "
                            f"'{embeddings_file if what == 'embeddings' else cohort_file}', which does not exist.")
    (meta, arrays), (cohort_meta, cohort_arrays) = files["embeddings"], files["cohort"]
    cohort = torch.from_numpy(cohort_arrays["embeddings"]).to(device)
    top_n = cohort.shape[0] if method == "snorm" else top_n
    if not 2 <= top_n <= cohort.shape[0]:
        raise EvalError(f"--norm_top_n {top_n} needs a cohort of at least that many (and 2) speakers; "
                        f"--train_list '{cohort_meta.get('train_list')}' has {cohort.shape[0]}. Lower --norm_top_n, "
                        f"or use --score_norm snorm (the whole cohort).")
    index = {name: i for i, name in enumerate(arrays["names"].tolist())}
    vectors = file_vectors(torch.from_numpy(arrays["embeddings"]).to(device), bool(meta.get("test_normalize", True)))
    mean, std = cohort_statistics(vectors, cohort, top_n)  # (F,) each
    entries = {}
    for trials, (name, stem) in zip(trial_lists, score_stems(trial_lists).items(), strict=True):
        pairs = list(zip(trials.enroll, trials.test, strict=True))
        cosine = torch.from_numpy(score_trial_list((index, vectors), pairs, "cosine")).to(device)
        rows = [torch.tensor([index[f] for f in side], dtype=torch.long, device=device)
                for side in (trials.enroll, trials.test)]
        normed = norm_with_statistics(cosine, mean, std, *rows).cpu().numpy()
        check_finite(normed, trials)
        write_scores(result_dir / f"{stem}.{method}.txt", normed, trials)
        entries[name] = {"method": method, "score": NORM_SCORE, "top_n": top_n, "cohort_speakers": cohort.shape[0],
                         "cohort_utts_per_speaker": cohort_meta.get("norm_cohort_utts"), "n_trials": len(normed),
                         "scores_file": f"{stem}.{method}.txt"}
    return entries
