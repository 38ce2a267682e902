"""The calibration model of quality-aware score calibration (QMF), shared by the calibration stage (calibrate.py)
and the inference API (dtdysv/api.py): its features, its fit, its file format, and the Bayes decision on its llrs.

``llr = w . f + b`` over the features of a trial (``feature_names``), trained by prior-weighted logistic regression
(N. Brümmer, "Measuring, refining and calibrating speaker and language information extracted from speech", PhD
thesis, Stellenbosch 2010). The quality features are order-free, as in WeSpeaker's QMF: the minimum and maximum of
the two sides' log durations (and cohort means), so that swapping enrollment and test leaves a trial's llr
unchanged. A calibrated score is a log-likelihood ratio, so the Bayes decision for a target prior and costs is a
fixed threshold (``bayes_threshold``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

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
    """Prior-weighted logistic regression: the linear map of ``features`` (N, K) to llrs that minimises the
    cross-entropy at ``prior`` (targets and non-targets weighted ``prior`` and ``1 - prior`` whatever their
    counts), with a tiny ``l2`` penalty so that separable data has a finite answer. Newton's method on
    standardised features, with step halving; converges in a few iterations.
    """
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
    """The ridge penalty on the standardised features: 1 / n_trials, the per-trial share of scikit-learn's default
    (C = 1, which WeSpeaker's QMF uses), so that a short calibration list is not fitted to its noise."""
    return 1.0 / max(n_trials, 1)


def feature_names(score_norm: str, top_n: int) -> tuple[str, ...]:
    """The names of the features for a --score_norm ('none', 'asnorm' or 'snorm') and --norm_top_n."""
    names = ("score" if score_norm == "none" else f"score_{score_norm}", "log_seconds_min", "log_seconds_max")
    if score_norm == "none":
        return names
    cohort = f"cohort_top{top_n}_mean" if score_norm == "asnorm" else "cohort_mean"
    return (*names, f"{cohort}_min", f"{cohort}_max")


def quality_features(scores: ArrayLike, seconds: tuple[ArrayLike, ArrayLike],
                     cohort_means: tuple[ArrayLike, ArrayLike] | None = None) -> np.ndarray:
    """The (N, K) features of N trials in ``feature_names`` order: the score, the minimum and maximum of the two
    sides' log durations (``seconds``: (N,) of each side) and, with a cohort, of their cohort means."""
    columns = [np.asarray(scores, dtype=np.float64)]
    sides = [np.log(np.asarray(seconds[0], dtype=np.float64)), np.log(np.asarray(seconds[1], dtype=np.float64))]
    columns += [np.minimum(*sides), np.maximum(*sides)]
    if cohort_means is not None:
        sides = [np.asarray(cohort_means[0], dtype=np.float64), np.asarray(cohort_means[1], dtype=np.float64)]
        columns += [np.minimum(*sides), np.maximum(*sides)]
    return np.stack(columns, axis=1)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The llr above which deciding 'target' costs less: log(C_fa (1 - p) / (C_miss p))."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    if not (c_miss > 0.0 and c_fa > 0.0):
        raise ValueError(f"the costs of a miss and of a false alarm must be positive, got {c_miss} and {c_fa}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def read_model(path: str | Path) -> tuple[Calibration, dict[str, Any]]:
    """(model, the whole JSON object) of a calibration model file; ValueError (or OSError) saying why it is not
    one."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"its format is {found!r}, not {MODEL_FORMAT!r}")
    return Calibration.from_dict(data), data
