"""Evaluation: embed the files of a trial list, score every trial, write ``scores.txt`` and ``metrics.json``.

Protocols (named in every result):
- ``paper`` (``eval_frames`` > 0): ``num_eval`` evenly spaced crops of ``eval_frames`` frames per file; trial score
  = minus the mean Euclidean distance over the crop pairs (embeddings L2-normalised when the loss says so), as in
  the DTDY paper and voxceleb_trainer.
- ``whole`` (``eval_frames`` 0): one embedding of the whole utterance; cosine score.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from config import Config
from DatasetLoader import TestDataset, TrialList
from scoring import normalize_embeddings, score_trial_list
from SpeakerNet import ModelTrainer
from tuneThreshold import compute_metrics

log = logging.getLogger(__name__)

CROPS_PER_BATCH = 64  # test crops embedded together


def protocol_of(cfg: Config) -> tuple[str, str]:
    """(scoring protocol for scoring.score_trials, description written in the results)."""
    if cfg.eval_frames > 0:
        return "paper", (f"{cfg.num_eval} crops of {cfg.eval_frames} frames per file, score = -mean Euclidean "
                         f"distance over the {cfg.num_eval}x{cfg.num_eval} crop pairs")
    return "cosine", "whole utterances, cosine score"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_scores(path: Path, scores: np.ndarray, trials: TrialList) -> None:
    """One line per trial: 'score label enroll test' (no label column for an unlabeled list)."""
    if trials.labels is None:
        lines = [f"{s:.6f} {e} {t}" for s, e, t in zip(scores, trials.enroll, trials.test, strict=True)]
    else:
        lines = [f"{s:.6f} {lab} {e} {t}"
                 for s, lab, e, t in zip(scores, trials.labels, trials.enroll, trials.test, strict=True)]
    _atomic_write(path, "\n".join(lines) + "\n")


def evaluate(trainer: ModelTrainer, trial_lists: list[TrialList], cfg: Config, result_dir: Path, loss: nn.Module,
             show_progress: bool = True) -> dict[str, Any]:
    """Embed, score and (for a labeled list) compute EER and minDCF; writes the two result files."""
    trials = trial_lists[0]
    files = trials.files
    per_file = cfg.num_eval if cfg.eval_frames > 0 else 1
    loader = DataLoader(TestDataset(files, cfg.test_path, cfg.eval_frames, cfg.num_eval),
                        batch_size=max(1, CROPS_PER_BATCH // per_file) if cfg.eval_frames > 0 else 1,
                        num_workers=cfg.nDataLoaderThread, shuffle=False)
    embeddings = trainer.embed(loader, len(files), show_progress)
    stacked = normalize_embeddings(torch.stack(embeddings), getattr(loss, "test_normalize", True))
    protocol, description = protocol_of(cfg)
    scores = score_trial_list(({f: i for i, f in enumerate(files)}, stacked),
                              list(zip(trials.enroll, trials.test, strict=True)), protocol)
    write_scores(result_dir / "scores.txt", scores, trials)
    metrics: dict[str, Any] = {"test_list": trials.path, "protocol": description, "n_trials": len(scores),
                               "n_files": len(files)}
    if trials.labels is None:
        log.info("%s: %d trials scored (unlabeled list: no metrics) -> %s", trials.path, len(scores),
                 result_dir / "scores.txt")
    else:
        p_targets = tuple(sorted({0.01, 0.05, cfg.dcf_p_target}))
        metrics.update(compute_metrics(scores, trials.labels, p_targets=p_targets, c_miss=cfg.dcf_c_miss,
                                       c_fa=cfg.dcf_c_fa))
        log.info("%s: EER %.4f%%, minDCF(p=%.2g) %.4f, minDCF(p=0.01) %.4f, %d trials", trials.path,
                 metrics["eer_percent"], cfg.dcf_p_target, metrics[f"min_dcf_p{float(cfg.dcf_p_target)}"],
                 metrics["min_dcf_p0.01"], len(scores))
    finite = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}
    _atomic_write(result_dir / "metrics.json", json.dumps(finite, indent=2) + "\n")
    return metrics
