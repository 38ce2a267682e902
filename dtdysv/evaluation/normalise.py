"""Score normalisation (``--score_norm asnorm|snorm``, as in WeSpeaker): the cohort stage (train list ->
``cohort.npz``) and the norm stage (embeddings.npz + cohort.npz + trial lists -> ``<list>/scores.<norm>.txt``).

The cohort is one vector per training speaker (``--train_list``): the mean of the L2-normalised crop-mean
embeddings of ``norm_cohort_utts`` utterances spread over its list entries. Cohort scores are cosines, so the score
that is normalised is the cosine of the L2-normalised crop-mean embeddings of the two files: for ``whole`` that is
the raw score itself; for ``paper`` it is not the (distance) raw score but its cosine counterpart, and metrics.json
says so ("score"). AS-norm: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t), mu and sd over each file's ``norm_top_n``
highest cohort scores; S-norm: over the whole cohort.

``--mean_subtraction`` subtracts the training-set mean of the raw embeddings (the mean of the cohort files' raw crop
means) from every raw crop embedding, before any L2 normalisation, for the test files and the cohort files alike
(WeSpeaker subtracts the mean of its raw training embeddings). cohort.npz holds 'names' (M speakers), 'embeddings'
(M, D) the cohort without mean subtraction, and per cohort file (U of them): 'file_means' its crop means (crops
L2-normalised first when the loss says so), 'raw_means' its raw crop means (whose mean is the training-set mean),
'centred_means' the crop means of its centred crops, and 'owner' its speaker; either cohort is computed from them.
The maths is in asnorm.py, shared with the inference API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from config import Config
from dtdysv.data.lists import read_train_list
from dtdysv.evaluation.asnorm import (
    cohort_statistics,
    crop_means,
    file_vectors,
    norm_with_statistics,
    raw_mean,
    speaker_vectors,
)
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
    variant_file,
    write_scores,
)
from dtdysv.evaluation.score import score_trial_list
from SpeakerNet import Embedder

log = logging.getLogger(__name__)

NORM_SCORE = "cosine of the L2-normalised crop-mean embeddings"


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
    crops = embed_files(embedder, chosen, "", cfg, show_progress, "cohort files")  # (U, C, D) raw
    raw_means = crops.mean(1)
    means, centred = crop_means(crops, normalize), crop_means(crops - raw_mean(raw_means), normalize)
    owner_t = torch.tensor(owner, dtype=torch.long)
    cohort = speaker_vectors(means, owner_t, len(train.speakers))
    if embedder.env.is_main:
        save_npz(path, {**expected, "n_speakers": len(train.speakers)}, names=np.array(train.speakers),
                 embeddings=cohort.numpy(), file_means=means.numpy(), raw_means=raw_means.numpy(),
                 centred_means=centred.numpy(), owner=owner_t.numpy())


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
    mean = raw_mean(torch.from_numpy(cohort_arrays["raw_means"])).to(device) if run.cfg.mean_subtraction else None
    file_means = cohort_arrays["centred_means" if run.cfg.mean_subtraction else "file_means"]
    cohort = speaker_vectors(torch.from_numpy(file_means).to(device), torch.from_numpy(cohort_arrays["owner"]),
                             len(cohort_arrays["names"]))
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
    """Normalise every list's cosine scores into ``<list>/scores.<norm>.txt`` (``ListResult.norm``)."""
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
        write_scores(run.list_dir(item.name) / variant_file(method), normed, trials)
        item.norm = ScoreSet(method, {"method": method, "score": NORM_SCORE, "top_n": stats.top_n,
                                         "cohort_speakers": stats.cohort_speakers,
                                         "cohort_utts_per_speaker": stats.cohort_meta.get("norm_cohort_utts"),
                                         "mean_subtraction": run.cfg.mean_subtraction, "n_trials": len(normed)})
