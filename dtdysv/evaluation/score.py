"""The score stage (embeddings.npz + trial lists -> ``<list>/scores.txt``) and its maths (pure torch).

Protocols: "paper" (voxceleb_trainer; DTDY-CNN, Kim, Nam, Park, arXiv 2203.15277): minus the mean Euclidean distance
over all C x C enrollment/test crop pairs. "cosine": cosine of the crop-mean embeddings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dtdysv.evaluation.asnorm import centre
from dtdysv.evaluation.results import (
    RAW,
    EvalRun,
    ListResult,
    ScoreSet,
    check_finite,
    protocol_of,
    variant_file,
    write_scores,
)

log = logging.getLogger(__name__)

PROTOCOLS = ("paper", "cosine")

EmbeddingTable = Mapping[str, Tensor] | tuple[Mapping[str, int], Tensor]


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown scoring protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")


NEAR_DISTANCE = 1e-2  # relative squared distance below which a pair is recomputed as a direct difference


def _paper_scores(enroll: Tensor, test: Tensor, sq_e: Tensor | None = None, sq_t: Tensor | None = None) -> Tensor:
    """-mean_ij ||e_i - t_j|| for (n, Ce, D), (n, Ct, D) -> (n,), in the inputs' dtype.

    Uses |e|^2 + |t|^2 - 2 e.t; pairs below NEAR_DISTANCE (|e|^2 + |t|^2), where that loses precision, are recomputed
    directly.
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
    """Score (enroll, test) pairs -> float64 (len(pairs),); independent of ``batch_size``.

    embeddings: {file: (C, D) or (D,)} or (index {file: row}, stacked (files, C, D) or (files, D)).
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


def scores_source(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a list's scores come from, from the meta of embeddings.npz: the weights' fingerprint and the settings
    of the embeddings. The variants of a list's folder are kept together only while this is the same."""
    return {"weights": meta.get("weights"), "embeddings": {key: meta.get(key) for key in (
        "protocol", "eval_frames", "num_eval", "resample", "test_normalize")}}


def score_stage(run: EvalRun, lists: list[ListResult]) -> None:
    """Score every list from embeddings.npz by its protocol into ``<list>/scores.txt`` (``ListResult.raw``);
    --mean_subtraction subtracts the training-set mean from every raw crop embedding before its L2 normalisation."""
    meta, arrays = run.embeddings("Scoring")
    proto = protocol_of(int(meta["eval_frames"]), int(meta["num_eval"]))
    index = {name: i for i, name in enumerate(arrays["names"].tolist())}
    table = torch.from_numpy(arrays["embeddings"]).to(run.device)
    normalize = bool(meta.get("test_normalize", True))
    detail = proto["detail"]
    if run.cfg.mean_subtraction:
        table = centre(table, run.train_mean())
        detail += ", after subtracting the training-set mean of the raw embeddings"
    crops = F.normalize(table, dim=-1) if normalize else table
    batch = 256 if run.device.type == "cpu" else 4096
    for item in lists:
        trials = item.trials
        start = time.perf_counter()
        scores = score_trial_list((index, crops), list(zip(trials.enroll, trials.test, strict=True)),
                                  proto["scoring"], batch_size=batch)
        seconds = time.perf_counter() - start
        check_finite(scores, trials)
        path = run.list_dir(item.name) / variant_file(RAW)
        write_scores(path, scores, trials)
        log.info("%s: %d trials scored in %.2f s -> %s", item.name, len(scores), seconds, path)
        item.source = scores_source(meta)
        item.raw = ScoreSet(RAW, {"test_list": trials.path, "protocol": proto["name"], "protocol_detail": detail,
                                  "mean_subtraction": run.cfg.mean_subtraction, "n_files": len(trials.files),
                                  "n_trials": len(scores)})
