"""Evaluation as a chain of file-in/file-out stages, each rerunnable alone from the files before it:

    embed      audio + trial lists           -> embeddings.npz   (embedding.embed_stage; a cache reused while it fits)
    cohort     train list (--score_norm)     -> cohort.npz       (normalisation.cohort_stage)
    score      embeddings.npz + trial lists  -> scores*.txt      (scoring.score_stage)
    normalise  embeddings.npz + cohort.npz   -> scores*.<norm>.txt (normalisation.norm_stage)
    calibrate  score files + embeddings.npz  -> scores*.cal.txt, calibration.json (calibrate.calibrate_stage)
    metrics    score files                   -> metrics.json     (metrics.metrics_stage; rerun_metrics)
    plot       metrics.json + score files    -> det.png          (detplot.plot_stage)

Files in the result folder (``<save_path>/result``):
  scores.txt, scores_<stem>.txt    'score label enroll test' for the first / every further list (no label column
                                   for an unlabeled list); normalised: scores.<norm>.txt, scores_<stem>.<norm>.txt
  scores*.cal.txt, calibration.json  calibrated scores (log-likelihood ratios) and the calibration model
                                   (--calibration_list / --calibration_model; the calibration list is scored as
                                   one more list, "purpose": "calibration")
  metrics.json                     the first list's metrics at the top level; with several lists also
                                   "lists": {name: metrics}; unlabeled lists get scores and no metrics
  det.png                          DET curves (normal-deviate axes) with the EER and minDCF points
  embeddings.npz, cohort.npz       'names', 'embeddings' (float32, as the model outputs them) and 'meta' (JSON:
                                   protocol, checkpoint, weights fingerprint, model settings)

The protocols (``paper``, ``whole``) are described in embedding.py, the score normalisation and --mean_subtraction
(which needs the cohort file, with or without --score_norm) in normalisation.py, the calibration in calibrate.py.
``score_from_cache`` runs every stage after the embedding, so it needs neither the model nor the audio
(``python trainSpeakerNet.py --eval --score_from_cache``); a cache made with other weights or settings is rebuilt by
``evaluate`` and refused by ``score_from_cache``, with a message saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from calibrate import calibrate_stage, read_calibration_list
from config import Config
from datalists import TrialList
from detplot import plot_stage
from embedder import Embedder
from embedding import (
    EvalError,
    checkpoint_fingerprint,
    differences,
    embed_stage,
    identity,
    load_npz,
    weights_fingerprint,
)
from metrics import metrics_stage
from normalisation import cohort_identity, cohort_stage, load_cohort, norm_stage, train_mean
from scoring import score_stage, score_stems

log = logging.getLogger(__name__)

CACHE_FILE, COHORT_FILE = "embeddings.npz", "cohort.npz"


def check_eval_options(cfg: Config) -> None:
    """Refuse evaluation options that cannot work together (call once at start-up)."""
    problems = []
    if cfg.eval_frames < 0 or (cfg.eval_frames > 0 and cfg.num_eval < 1):
        problems.append(f"--eval_frames must be >= 0 (0: whole utterances) and --num_eval >= 1, got "
                        f"{cfg.eval_frames} and {cfg.num_eval}")
    if cfg.score_norm == "asnorm" and cfg.norm_top_n < 2:
        problems.append(f"--norm_top_n must be >= 2 for --score_norm asnorm, got {cfg.norm_top_n}")
    if cfg.bootstrap < 0:
        problems.append(f"--bootstrap must be >= 0 (0: no intervals), got {cfg.bootstrap}")
    if cfg.norm_cohort_utts < 1:
        problems.append(f"--norm_cohort_utts must be >= 1, got {cfg.norm_cohort_utts}")
    if cfg.score_from_cache and not cfg.eval:
        problems.append("--score_from_cache rescores an evaluation: use it with --eval")
    if cfg.calibration_model and not cfg.calibration_list and not Path(cfg.calibration_model).is_file():
        problems.append(f"--calibration_model '{cfg.calibration_model}' does not exist; give --calibration_list "
                        f"<labelled trial list> to train it there")
    if bool(cfg.extract) != bool(cfg.extract_out):
        problems.append("--extract <file list> and --extract_out <file.npz> go together")
    if problems:
        raise EvalError("Evaluation options: " + "; ".join(problems) + ".")


def needs_cohort(cfg: Config) -> bool:
    """Whether the cohort stage runs: for --score_norm and for --mean_subtraction (the training-set mean)."""
    return cfg.score_norm != "none" or cfg.mean_subtraction


def p_targets_of(cfg: Config) -> tuple[float, ...]:
    """The p_target values of the minDCF: 0.01, 0.05 and --dcf_p_target."""
    return tuple(sorted({0.01, 0.05, float(cfg.dcf_p_target)}))


def warn_shared_trials(calibration: TrialList, trial_lists: Sequence[TrialList]) -> None:
    """Log a warning for every test list that shares trials with the calibration list (its figures are not
    held-out ones)."""
    pairs = set(zip(calibration.enroll, calibration.test, strict=True))
    for trials in trial_lists:
        shared = sum(pair in pairs for pair in zip(trials.enroll, trials.test, strict=True))
        if shared:
            log.warning("%d of the %d trials of '%s' are trials of --calibration_list '%s': its calibrated figures "
                        "are not those of held-out trials", shared, len(trials.enroll), trials.path, calibration.path)


def score_and_report(cfg: Config, trial_lists: Sequence[TrialList], result_dir: Path, checkpoint: str | Path | None,
                     device: torch.device, calibration: TrialList | None = None) -> dict[str, Any]:
    """The stages after the embedding, from ``<result_dir>/embeddings.npz`` (and cohort.npz): score files,
    normalised and calibrated score files, metrics.json and det.png; returns the content of metrics.json.
    ``calibration``: the --calibration_list, scored as one more list and the calibration trained on it."""
    lists = [*trial_lists, calibration] if calibration is not None else list(trial_lists)
    mean = None
    if cfg.mean_subtraction:
        mean = train_mean(load_cohort(result_dir / COHORT_FILE, "--mean_subtraction")[1], result_dir / COHORT_FILE)
    entries = score_stage(result_dir / CACHE_FILE, lists, result_dir, device, mean)
    if cfg.score_norm != "none":
        norms = norm_stage(result_dir / CACHE_FILE, result_dir / COHORT_FILE, lists, result_dir,
                           cfg.score_norm, cfg.norm_top_n, device, cfg.mean_subtraction)
        for name, norm in norms.items():
            entries[name]["norm"] = norm
    calibration_name = list(entries)[-1] if calibration is not None else None
    if calibration is not None:
        warn_shared_trials(calibration, trial_lists)
    if calibration is not None or cfg.calibration_model:
        for name, cal in calibrate_stage(cfg, result_dir, entries, calibration_name, device).items():
            entries[name]["cal"] = cal
        if calibration_name is not None:
            entries[calibration_name]["purpose"] = "calibration"
    else:  # calibrated scores of an earlier run are not left beside these
        for stem in score_stems(lists).values():
            (result_dir / f"{stem}.cal.txt").unlink(missing_ok=True)
    metrics = metrics_stage(result_dir, entries, checkpoint, p_targets_of(cfg), cfg.dcf_c_miss, cfg.dcf_c_fa,
                            cfg.dcf_p_target, cfg.bootstrap)
    plot_stage(result_dir)
    return metrics


def evaluate(embedder: Embedder, trial_lists: list[TrialList], cfg: Config, result_dir: Path, normalize: bool,
             show_progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed the files of every list once (reusing the cache), score, and write the results; returns the first
    list's metrics (with "lists" for several). ``normalize``: the loss's test_normalize (crop embeddings
    L2-normalised before scoring). ``checkpoint``: the weights' file, recorded in the results.

    Under DDP every rank embeds its share; rank 0 writes the files and scores, the others return {}.
    """
    check_eval_options(cfg)
    result_dir = Path(result_dir)
    weights = weights_fingerprint(embedder.model.state_dict())
    calibration = read_calibration_list(cfg.calibration_list, cfg.test_path) if cfg.calibration_list else None
    every = [*trial_lists, calibration] if calibration is not None else trial_lists
    files = list(dict.fromkeys(f for trials in every for f in trials.files))
    embed_stage(embedder, files, cfg, result_dir / CACHE_FILE, weights, normalize, checkpoint, show_progress)
    if needs_cohort(cfg):
        cohort_stage(embedder, cfg, result_dir / COHORT_FILE, weights, normalize, show_progress)
    if not embedder.env.is_main:
        return {}
    return score_and_report(cfg, trial_lists, result_dir, checkpoint, embedder.device, calibration)


def score_from_cache(cfg: Config, trial_lists: list[TrialList], result_dir: Path,
                     checkpoint: str | Path | None = None) -> dict[str, Any]:
    """``evaluate`` without the model or the audio, from ``<result_dir>/embeddings.npz`` (and cohort.npz).

    The cache must match the protocol and model settings, hold every file of the lists and, when ``checkpoint``
    is given (the weights the user means to evaluate), come from the same weights; else EvalError says why.
    """
    check_eval_options(cfg)
    result_dir = Path(result_dir)
    path = result_dir / CACHE_FILE
    found = load_npz(path)
    if found is None:
        raise EvalError(f"--score_from_cache: there is no embedding cache '{path}'; run --eval without "
                        f"--score_from_cache first (it writes the cache).")
    meta, arrays = found
    problems = differences(meta, identity(cfg, None))
    if checkpoint and not problems and checkpoint_fingerprint(checkpoint, cfg) != meta.get("weights"):
        problems.append(f"weights: the cache was made from {meta.get('checkpoint') or 'other weights'!r}, whose "
                        f"weights differ from those in '{checkpoint}'")
    names = set(arrays["names"].tolist())
    calibration = (read_calibration_list(cfg.calibration_list, cfg.test_path, check_files=False)
                   if cfg.calibration_list else None)
    every = [*trial_lists, calibration] if calibration is not None else trial_lists
    missing = [f for f in dict.fromkeys(f for trials in every for f in trials.files) if f not in names]
    if missing:
        problems.append(f"{len(missing)} files of the trial lists are not in it, e.g. '{missing[0]}'")
    if needs_cohort(cfg) and not problems:
        found_cohort = load_npz(result_dir / COHORT_FILE)
        if found_cohort is None:
            why = f"--score_norm {cfg.score_norm}" if cfg.score_norm != "none" else "--mean_subtraction"
            problems.append(f"{why} needs the cohort cache '{result_dir / COHORT_FILE}', which does not exist")
        elif cohort_problems := differences(found_cohort[0], cohort_identity(cfg, meta.get("weights"),
                                                                             meta.get("test_normalize"))):
            problems.append("the cohort cache does not fit (" + "; ".join(cohort_problems) + ")")
    if problems:
        raise EvalError(f"The embedding cache '{path}' cannot be used: " + "; ".join(problems) + ". Run --eval "
                        "without --score_from_cache to embed again.")
    log.info("scoring from the cached embeddings in '%s' (%d files, checkpoint %s)", path, len(names),
             meta.get("checkpoint") or "not recorded")
    if meta.get("test_path") != str(Path(cfg.test_path).resolve()):
        log.warning("the cached embeddings are of the files under '%s'; --test_path is '%s' (not read: the list's "
                    "names are matched as they are)", meta.get("test_path"), cfg.test_path)
    return score_and_report(cfg, trial_lists, result_dir, meta.get("checkpoint") or checkpoint, torch.device("cpu"),
                            calibration)
