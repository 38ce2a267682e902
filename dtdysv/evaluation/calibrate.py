"""The calibration stage (``--calibration_list``, ``--calibration_model``): score files -> ``<list>/scores.cal.txt``
log-likelihood ratios beside the raw and normalised ones, and ``calibration.json`` (the model: qmf.py).

Quality-aware calibration (QMF, as in WeSpeaker's and 3D-Speaker's VoxCeleb recipes): ``llr = w . f + b`` over the
features of a trial (``qmf.feature_names``)

    score                         the final score: the --score_norm score if any, else the raw score, as written
    log_seconds_min / _max        the smaller and the larger log duration (s) of the two files (embeddings.npz
                                  'seconds', from the wav headers)
    cohort_..._mean_min / _max    the smaller and the larger of the two files' means of their top --norm_top_n
                                  cosine scores against the cohort (asnorm; snorm: the whole cohort), the statistics
                                  of the score normalisation

(no cohort features without --score_norm); order-free, so a trial scores the same both ways round. The map is
trained by prior-weighted logistic regression at prior 0.5, whose objective is Cllr (with a ridge penalty of 1 /
trials on the standardised features), on a labelled ``--calibration_list`` (its files embedded with the test
lists) and written to ``--calibration_model`` (default ``<save_path>/result/calibration.json``) with its feature
names, the settings they depend on (protocol, score normalisation, mean subtraction) and the fingerprint of the
weights whose scores it was trained on; a model given without a list is applied as it is, and refused if it was
trained on other features or settings. Everything is computed from the result folder's files (score files,
embeddings.npz, cohort.npz), so the stage reruns without the model or the audio. ``export.py --calibration``
carries the model, with the mean and cohort it needs, into an export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from config import DEFAULTS, Config
from dtdysv.data.lists import DataError, TrialList, read_trial_list
from dtdysv.evaluation.normalise import FileStatistics, file_statistics
from dtdysv.evaluation.qmf import (
    MODEL_FORMAT,
    PRIOR,
    Calibration,
    feature_names,
    fit_calibration,
    quality_features,
    read_model,
    ridge,
)
from dtdysv.evaluation.results import (
    CAL,
    CALIBRATION_FILE,
    EvalError,
    EvalRun,
    ListResult,
    ScoreNorm,
    ScoreSet,
    read_scores,
    variant_file,
    write_scores,
)
from dtdysv.runtime.fileio import atomic_write_text
from tuneThreshold import cllr

log = logging.getLogger(__name__)


def read_calibration_list(path: str | Path, test_path: str | Path, check_files: bool = True) -> TrialList:
    """The labelled trial list of --calibration_list, with both target and non-target trials."""
    try:
        trials = read_trial_list(path, test_path, check_files)
    except DataError as err:
        raise EvalError(f"--calibration_list '{path}': {err}") from None
    if trials.labels is None:
        raise EvalError(f"--calibration_list '{path}' is unlabeled ('<enroll> <test>' lines); calibration is "
                        f"trained on labelled trials: '<label 0|1> <enroll> <test>' lines, paths under --test_path.")
    n_target = int(trials.labels.sum())
    if n_target in (0, len(trials.labels)):
        kind = "target (1)" if n_target else "non-target (0)"
        raise EvalError(f"--calibration_list '{path}' has only {kind} trials ({len(trials.labels)}); calibration "
                        f"needs both target (1) and non-target (0) trials.")
    return trials


def trial_features(run: EvalRun, item: ListResult, seconds: Mapping[str, float],
                   stats: FileStatistics | None) -> tuple[np.ndarray, TrialList]:
    """The (N, K) features of a list's trials (in ``feature_names`` order) and its trials, from its score file."""
    scores = read_scores(run.list_dir(item.name) / item.final().scores_file)
    durations = tuple(np.array([seconds[f] for f in side]) for side in (scores.enroll, scores.test))
    cohort_means = None
    if stats is not None:
        mean = stats.mean.double().cpu().numpy()
        cohort_means = tuple(mean[[stats.index[f] for f in side]] for side in (scores.enroll, scores.test))
    trials = TrialList(item.trials.path if item.trials else "", scores.labels, scores.enroll, scores.test)
    return quality_features(scores.scores, durations, cohort_means), trials


def save_model(path: Path, model: Calibration, settings: Mapping[str, Any], trained_on: str, labels: np.ndarray,
               train_cllr: float, raw_cllr: float, fingerprint: str | None) -> None:
    """Write the model as JSON with what it was trained on: settings, list, trial counts, Cllr before and after,
    the fingerprint of the embedding model's weights that gave the scores (None if unknown)."""
    data = {"format": MODEL_FORMAT, "version": 2, **model.to_dict(), "prior": PRIOR, "settings": dict(settings),
            "model_fingerprint": fingerprint, "trained_on": trained_on, "n_target": int(labels.sum()),
            "n_nontarget": int((labels == 0).sum()),
            "train_cllr_bits": train_cllr, "train_cllr_bits_uncalibrated": raw_cllr}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_model(path: Path, names: tuple[str, ...], settings: Mapping[str, Any]) -> tuple[Calibration, str]:
    """The model of ``path`` and its training list; refused unless trained on ``names`` under ``settings``."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"--calibration_model '{path}' does not exist; give --calibration_list <labelled trial "
                        f"list> to train it.")
    try:
        model, data = read_model(path)
    except ValueError as err:
        raise EvalError(f"--calibration_model '{path}' is not a calibration model of this framework ({err}); "
                        f"train one with --calibration_list.") from None
    trained = {**data.get("settings", {}), "features": list(model.features)}
    now = {**settings, "features": list(names)}
    if trained != now:
        diff = "; ".join(f"{key}: model {trained.get(key)!r}, now {value!r}" for key, value in now.items()
                         if trained.get(key) != value)
        raise EvalError(f"--calibration_model '{path}' was trained on other features or settings ({diff}). Evaluate "
                        f"with the model's settings, or train a new model with --calibration_list.")
    return model, str(data.get("trained_on", ""))


def adopt_settings(cfg: Config) -> Config:
    """``cfg`` with the scoring settings (--score_norm, --norm_top_n, --mean_subtraction) that a --calibration_model
    applied without --calibration_list was trained with, where ``cfg`` leaves them at their defaults: the model file
    records them, so they need not be repeated. A setting given otherwise is kept (and refused by ``load_model``)."""
    path = Path(cfg.calibration_model)
    if cfg.calibration_list or not path.is_file():
        return cfg
    try:
        settings = json.loads(path.read_text()).get("settings", {})
    except (ValueError, AttributeError, OSError):
        return cfg  # load_model says what is wrong with the file
    adopted = {key: settings[key] for key in ("score_norm", "norm_top_n", "mean_subtraction")
               if settings.get(key) is not None and getattr(cfg, key) == getattr(DEFAULTS, key)
               and settings[key] != getattr(cfg, key)}
    if adopted:
        log.info("applying --calibration_model '%s' with the settings it was trained with: %s", path,
                 ", ".join(f"--{k} {v}" for k, v in adopted.items()))
    return dataclasses.replace(cfg, **adopted)


def calibrate_stage(run: EvalRun, lists: list[ListResult]) -> None:
    """Train on the --calibration_list (else apply --calibration_model); write ``<list>/scores.cal.txt`` llrs."""
    cfg = run.cfg
    meta, arrays = run.embeddings("Calibration")
    if "seconds" not in arrays:
        raise EvalError(f"Calibration needs the durations in '{run.embeddings_file}', which has none (an older "
                        f"version): run --eval without --score_from_cache.")
    seconds = dict(zip(arrays["names"].tolist(), arrays["seconds"].tolist(), strict=True))
    stats = file_statistics(run) if run.score_norm != ScoreNorm.NONE else None
    names = feature_names(run.score_norm, stats.top_n if stats else cfg.norm_top_n)
    settings = {"protocol": meta.get("protocol"), "score_norm": str(run.score_norm),
                "norm_top_n": stats.top_n if stats else None, "mean_subtraction": cfg.mean_subtraction}
    features = {item.name: trial_features(run, item, seconds, stats) for item in lists}
    path = Path(cfg.calibration_model) if cfg.calibration_model else run.result_dir / CALIBRATION_FILE
    training = next((item for item in lists if item.calibration), None)
    if training is not None:
        x, trials = features[training.name]
        model = fit_calibration(x, trials.labels, names, prior=PRIOR, l2=ridge(len(x)))
        train_cllr, raw_cllr = cllr(model.apply(x), trials.labels), cllr(x[:, 0], trials.labels)
        trained_on = cfg.calibration_list
        save_model(path, model, settings, trained_on, trials.labels, train_cllr, raw_cllr, meta.get("weights"))
        log.info("calibration trained on %d trials of '%s' (Cllr %.4f -> %.4f bits) -> '%s'", len(x),
                 cfg.calibration_list, raw_cllr, train_cllr, path)
    else:
        model, trained_on = load_model(path, names, settings)
    for item in lists:
        x, trials = features[item.name]
        write_scores(run.list_dir(item.name) / variant_file(CAL), model.apply(x), trials)
        item.cal = ScoreSet(CAL, {"method": "calibration", "model": str(path), "features": list(names),
                                       "trained_on": trained_on, "score": item.final().scores_file,
                                       "n_trials": len(x)})
