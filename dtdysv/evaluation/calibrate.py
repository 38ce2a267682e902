"""The calibration stage (``--calibration_list``, ``--calibration_model``): score files -> calibrated score files
``<stem>.cal.txt`` (log-likelihood ratios) beside the raw and normalised ones, and the calibration model file.

Quality-aware calibration (QMF, as in WeSpeaker's and 3D-Speaker's VoxCeleb recipes; the maths in calibration.py):
``llr = w . f + b`` over the features of a trial

    score                         the final score: the --score_norm score if any, else the raw score, as written
    log_seconds_enroll / _test    log durations (s) of both files (embeddings.npz 'seconds', from the wav headers)
    cohort_..._mean_enroll/_test  the mean of each file's top --norm_top_n cosine scores against the cohort (asnorm;
                                  snorm: the whole cohort), the statistics of the score normalisation

(no cohort features without --score_norm). The map is trained by prior-weighted logistic regression at prior 0.5,
whose objective is Cllr (with a ridge penalty of 1 / trials on the standardised features), on a labelled
``--calibration_list`` (its files embedded with the test lists) and written to ``--calibration_model`` (default
``<save_path>/result/calibration.json``) with its feature names and the settings they depend on (protocol, score
normalisation, mean subtraction); a model given without a list is applied as it is, and refused if it was trained
on other features or settings. Everything is computed from the result folder's files (score files,
embeddings.npz, cohort.npz), so the stage reruns without the model or the audio.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import Config
from dtdysv.data.lists import DataError, TrialList, read_trial_list
from dtdysv.evaluation.calibration import Calibration, cllr, fit_calibration
from dtdysv.evaluation.embed import EvalError, load_npz
from dtdysv.evaluation.normalise import FileStatistics, file_statistics
from dtdysv.evaluation.score import read_scores, write_scores
from dtdysv.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)

MODEL_FORMAT = "dtdy-sv-calibration"
MODEL_FILE = "calibration.json"
PRIOR = 0.5  # the training prior: the logistic-regression objective at 0.5 is Cllr

def ridge(n_trials: int) -> float:
    """The ridge penalty on the standardised features: 1 / n_trials, the per-trial share of scikit-learn's default
    (C = 1, which WeSpeaker's QMF uses), so that a short calibration list is not fitted to its noise."""
    return 1.0 / max(n_trials, 1)


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


def model_path_of(cfg: Config, result_dir: Path) -> Path:
    return Path(cfg.calibration_model) if cfg.calibration_model else Path(result_dir) / MODEL_FILE


def feature_names(score_norm: str, top_n: int) -> tuple[str, ...]:
    """The names of the features for a --score_norm and --norm_top_n."""
    names = ("score" if score_norm == "none" else f"score_{score_norm}", "log_seconds_enroll", "log_seconds_test")
    if score_norm == "none":
        return names
    cohort = f"cohort_top{top_n}_mean" if score_norm == "asnorm" else "cohort_mean"
    return (*names, f"{cohort}_enroll", f"{cohort}_test")


def final_scores_file(entry: Mapping[str, Any]) -> str:
    """The score file a list's calibration reads: the normalised one if any, else the raw one."""
    return entry["norm"]["scores_file"] if "norm" in entry else entry["scores_file"]


def trial_features(result_dir: Path, entry: Mapping[str, Any], seconds: Mapping[str, float],
                   stats: FileStatistics | None) -> tuple[np.ndarray, TrialList]:
    """The (N, K) features of a list's trials (in ``feature_names`` order) and its trials, from its score file."""
    scores = read_scores(Path(result_dir) / final_scores_file(entry))
    columns = [scores.scores, *(np.log([seconds[f] for f in side]) for side in (scores.enroll, scores.test))]
    if stats is not None:
        mean = stats.mean.double().cpu().numpy()
        columns += [mean[[stats.index[f] for f in side]] for side in (scores.enroll, scores.test)]
    trials = TrialList(entry.get("test_list", ""), scores.labels, scores.enroll, scores.test)
    return np.stack(columns, axis=1), trials


def save_model(path: Path, model: Calibration, settings: Mapping[str, Any], trained_on: str, labels: np.ndarray,
               train_cllr: float, raw_cllr: float) -> None:
    """Write the model as JSON with what it was trained on: settings, list, trial counts, Cllr before and after."""
    data = {"format": MODEL_FORMAT, "version": 1, **model.to_dict(), "prior": PRIOR, "settings": dict(settings),
            "trained_on": trained_on, "n_target": int(labels.sum()), "n_nontarget": int((labels == 0).sum()),
            "train_cllr_bits": train_cllr, "train_cllr_bits_uncalibrated": raw_cllr}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_model(path: Path, names: tuple[str, ...], settings: Mapping[str, Any]) -> tuple[Calibration, str]:
    """The calibration model of ``path`` and the list it was trained on, refused unless it was trained on ``names``
    under ``settings``."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"--calibration_model '{path}' does not exist; give --calibration_list <labelled trial "
                        f"list> to train it.")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(f"its format is {data.get('format')!r}, not {MODEL_FORMAT!r}")
        model = Calibration.from_dict(data)
    except (ValueError, AttributeError) as err:
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


def calibrate_stage(cfg: Config, result_dir: Path, entries: Mapping[str, Mapping[str, Any]],
                    calibration_name: str | None, device: torch.device) -> dict[str, dict]:
    """Train the calibration on the list ``calibration_name`` of ``entries`` (None: apply --calibration_model) and
    write every list's calibrated scores to ``<result_dir>/<stem>.cal.txt``; returns each list's description
    (method, model, features, trained_on, score, n_trials, scores_file)."""
    result_dir = Path(result_dir)
    found = load_npz(result_dir / "embeddings.npz")
    if found is None or "seconds" not in found[1]:
        raise EvalError(f"Calibration needs the durations in '{result_dir / 'embeddings.npz'}', which "
                        f"{'does not exist' if found is None else 'has none (an older version)'}: run --eval without "
                        f"--score_from_cache.")
    meta, arrays = found
    seconds = dict(zip(arrays["names"].tolist(), arrays["seconds"].tolist(), strict=True))
    stats = None
    if cfg.score_norm != "none":
        stats = file_statistics(result_dir / "embeddings.npz", result_dir / "cohort.npz", cfg.score_norm,
                                cfg.norm_top_n, cfg.mean_subtraction, device)
    names = feature_names(cfg.score_norm, stats.top_n if stats else cfg.norm_top_n)
    settings = {"protocol": meta.get("protocol"), "score_norm": cfg.score_norm,
                "norm_top_n": stats.top_n if stats else None, "mean_subtraction": cfg.mean_subtraction}
    features = {name: trial_features(result_dir, entry, seconds, stats) for name, entry in entries.items()}
    path = model_path_of(cfg, result_dir)
    if calibration_name is not None:
        x, trials = features[calibration_name]
        model = fit_calibration(x, trials.labels, names, prior=PRIOR, l2=ridge(len(x)))
        train_cllr, raw_cllr = cllr(model.apply(x), trials.labels), cllr(x[:, 0], trials.labels)
        trained_on = cfg.calibration_list
        save_model(path, model, settings, trained_on, trials.labels, train_cllr, raw_cllr)
        log.info("calibration trained on %d trials of '%s' (Cllr %.4f -> %.4f bits) -> '%s'", len(x),
                 cfg.calibration_list, raw_cllr, train_cllr, path)
    else:
        model, trained_on = load_model(path, names, settings)
    out = {}
    for name, entry in entries.items():
        x, trials = features[name]
        stem = Path(entry["scores_file"]).stem
        write_scores(result_dir / f"{stem}.cal.txt", model.apply(x), trials)
        out[name] = {"method": "calibration", "model": str(path), "features": list(names),
                     "trained_on": trained_on, "score": final_scores_file(entry),
                     "n_trials": len(x), "scores_file": f"{stem}.cal.txt"}
    return out
