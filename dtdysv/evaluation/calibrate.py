"""Score calibration: the calibration model (scores -> log-likelihood ratios) and its stage (``--calibration_list``,
``--calibration_model``): score files -> ``<stem>.cal.txt`` llrs and ``calibration.json``.

Quality-aware calibration (QMF, as in WeSpeaker's and 3D-Speaker's VoxCeleb recipes): ``llr = w . f + b``, trained by
prior-weighted logistic regression at prior 0.5 (objective Cllr; N. Brümmer, PhD thesis, Stellenbosch 2010), over

    score                         the final score (--score_norm score if any, else raw)
    log_seconds_enroll / _test    log durations (s) of both files (embeddings.npz 'seconds')
    cohort_..._mean_enroll/_test  mean of each file's top --norm_top_n cohort cosines (only with --score_norm)

The model stores its feature names and settings (protocol, normalisation, mean subtraction); applying it under other
ones is refused. Inputs are the result folder's files only, so the stage reruns without the model or audio.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from config import DEFAULTS, Config
from dtdysv.data.lists import DataError, TrialList, read_trial_list
from dtdysv.evaluation.normalise import FileStatistics, file_statistics
from dtdysv.evaluation.results import (
    CALIBRATION_FILE,
    EvalError,
    EvalRun,
    ListResult,
    ScoreNorm,
    ScoreSet,
    read_scores,
    write_scores,
)
from dtdysv.runtime.fileio import atomic_write_text
from tuneThreshold import cllr

log = logging.getLogger(__name__)

MODEL_FORMAT = "dtdy-sv-calibration"
PRIOR = 0.5  # the training prior: the logistic-regression objective at 0.5 is Cllr

class Calibration(NamedTuple):
    """``llr = features @ weights + bias``; ``features`` names each column (stored with the model)."""

    weights: np.ndarray  # (K,)
    bias: float
    features: tuple[str, ...]

    def apply(self, features: ArrayLike) -> np.ndarray:
        """features (N, K) -> llrs (N,)."""
        f = _features(features, len(self.weights))
        return f @ self.weights + self.bias

    def to_dict(self) -> dict:
        return {"weights": [float(w) for w in self.weights], "bias": float(self.bias), "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        try:
            weights = np.asarray(data["weights"], dtype=np.float64)
            features = tuple(str(name) for name in data["features"])
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a calibration model (needs weights, bias, features): {err}") from None
        if weights.ndim != 1 or len(weights) != len(features):
            raise ValueError(f"a calibration model needs one weight per feature, got {weights.shape} weights for "
                             f"{len(features)} features")
        return cls(weights, bias, features)


def _features(features: ArrayLike, width: int | None = None) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or (width is not None and f.shape[1] != width):
        raise ValueError(f"features must be (trials, {width or 'K'}), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain non-finite values")
    return f


def _labels(labels: ArrayLike, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be {n} values of 0 or 1, got shape {y.shape}")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("calibration needs both target (1) and non-target (0) trials")
    return y


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def fit_calibration(features: ArrayLike, labels: ArrayLike, names: tuple[str, ...] | None = None,
                    prior: float = 0.5, l2: float = 1e-6, max_iter: int = 100) -> Calibration:
    """Prior-weighted logistic regression: the linear map of ``features`` (N, K) to llrs minimising the cross-entropy at
    ``prior``, with a small ``l2`` penalty so separable data has a finite answer (Newton, step halving)."""
    f = _features(features)
    y = _labels(labels, f.shape[0])
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must lie in (0, 1), got {prior}")
    names = names or tuple(f"f{i}" for i in range(f.shape[1]))
    if len(names) != f.shape[1]:
        raise ValueError(f"{len(names)} feature names for {f.shape[1]} features")
    mean, std = f.mean(axis=0), f.std(axis=0)
    std[std == 0] = 1.0
    x = np.hstack([(f - mean) / std, np.ones((f.shape[0], 1))])  # (N, K + 1), the last column the bias
    weight = np.where(y, prior / y.sum(), (1.0 - prior) / (~y).sum())  # (N,)
    sign = np.where(y, 1.0, -1.0)
    offset = logit(prior)
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0

    def objective(theta: np.ndarray) -> float:
        return float(weight @ _softplus(-sign * (x @ theta + offset)) + 0.5 * penalty @ theta**2)

    theta = np.zeros(x.shape[1])
    value = objective(theta)
    for _ in range(max_iter):
        margin = sign * (x @ theta + offset)
        p_wrong = 1.0 / (1.0 + np.exp(margin))  # sigmoid(-margin), the derivative of softplus(-margin)
        grad = -(x.T @ (weight * sign * p_wrong)) + penalty * theta
        hess = (x.T * (weight * p_wrong * (1.0 - p_wrong))) @ x + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-8:
            candidate = theta - size * step
            new = objective(candidate)
            if new <= value:
                break
            size /= 2
        else:
            break
        theta, done = candidate, value - new < 1e-12
        value = new
        if done:
            break
    weights = theta[:-1] / std
    bias = float(theta[-1] - weights @ mean)
    return Calibration(weights, bias, tuple(names))


def ridge(n_trials: int) -> float:
    """The ridge penalty on standardised features: 1 / n_trials (scikit-learn's C = 1, as WeSpeaker's QMF)."""
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


def feature_names(score_norm: ScoreNorm, top_n: int) -> tuple[str, ...]:
    """The names of the features for a --score_norm and --norm_top_n."""
    names = ("score" if score_norm == ScoreNorm.NONE else f"score_{score_norm}", "log_seconds_enroll",
             "log_seconds_test")
    if score_norm == ScoreNorm.NONE:
        return names
    cohort = f"cohort_top{top_n}_mean" if score_norm == ScoreNorm.ASNORM else "cohort_mean"
    return (*names, f"{cohort}_enroll", f"{cohort}_test")


def trial_features(run: EvalRun, item: ListResult, seconds: Mapping[str, float],
                   stats: FileStatistics | None) -> tuple[np.ndarray, TrialList]:
    """The (N, K) features of a list's trials (in ``feature_names`` order) and its trials, from its score file."""
    scores = read_scores(run.result_dir / item.final().scores_file)
    columns = [scores.scores, *(np.log([seconds[f] for f in side]) for side in (scores.enroll, scores.test))]
    if stats is not None:
        mean = stats.mean.double().cpu().numpy()
        columns += [mean[[stats.index[f] for f in side]] for side in (scores.enroll, scores.test)]
    trials = TrialList(item.trials.path if item.trials else "", scores.labels, scores.enroll, scores.test)
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
    """The model of ``path`` and its training list; refused unless trained on ``names`` under ``settings``."""
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
    """Train on the --calibration_list (else apply --calibration_model); write ``<stem>.cal.txt`` llrs."""
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
        save_model(path, model, settings, trained_on, trials.labels, train_cllr, raw_cllr)
        log.info("calibration trained on %d trials of '%s' (Cllr %.4f -> %.4f bits) -> '%s'", len(x),
                 cfg.calibration_list, raw_cllr, train_cllr, path)
    else:
        model, trained_on = load_model(path, names, settings)
    for item in lists:
        x, trials = features[item.name]
        out = run.result_dir / f"{item.stem}.cal.txt"
        write_scores(out, model.apply(x), trials)
        item.cal = ScoreSet(out.name, {"method": "calibration", "model": str(path), "features": list(names),
                                       "trained_on": trained_on, "score": item.final().scores_file,
                                       "n_trials": len(x)})
