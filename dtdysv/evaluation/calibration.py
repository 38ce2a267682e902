"""Score calibration: scores -> log-likelihood ratios, and the metrics that judge them (Cllr, actual DCF).

Pure NumPy: arrays in, arrays or numbers out, no I/O.

A calibrated score is a log-likelihood ratio ``llr = log p(x | target) / p(x | non-target)``, so that the Bayes
decision for a prior ``p_target`` and costs ``C_miss``, ``C_fa`` is the fixed threshold
``log(C_fa (1 - p_target) / (C_miss p_target))``: a threshold means something without tuning it on the test list.
The calibration is a linear map of the raw score and, for quality-aware calibration (QMF, as in WeSpeaker and
3D-Speaker's VoxCeleb recipes), of quality measures of the trial (log durations of both sides, the mean of each
side's top imposter-cohort scores): ``llr = w . f + b``, trained by prior-weighted logistic regression (N. Brümmer,
"Measuring, refining and calibrating speaker and language information extracted from speech", PhD thesis,
Stellenbosch 2010), whose objective at prior 0.5 is Cllr itself.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

log = logging.getLogger(__name__)

LN2 = math.log(2.0)


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
        raise ValueError("calibration and its metrics need both target (1) and non-target (0) trials")
    return y


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def cllr(llrs: ArrayLike, labels: ArrayLike) -> float:
    """The log-likelihood-ratio cost in bits: 1 for llrs that say nothing (all zero), 0 for perfect ones; above 1
    the scores mislead. ``(mean_t log2(1 + e^-l) + mean_n log2(1 + e^l)) / 2``."""
    s = np.asarray(llrs, dtype=np.float64)
    y = _labels(labels, s.shape[0])
    return float((_softplus(-s[y]).mean() + _softplus(s[~y]).mean()) / (2 * LN2))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The llr above which deciding 'target' costs less: log(C_fa (1 - p) / (C_miss p))."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def actual_dcf(llrs: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0,
               c_fa: float = 1.0) -> float:
    """The detection cost of deciding at the Bayes threshold of the llrs, normalised as minDCF is (divided by
    ``min(C_miss p, C_fa (1 - p))``): equal to minDCF for well-calibrated llrs, higher otherwise."""
    s = np.asarray(llrs, dtype=np.float64)
    y = _labels(labels, s.shape[0])
    accept = s > bayes_threshold(p_target, c_miss, c_fa)
    p_miss, p_fa = float((~accept[y]).mean()), float(accept[~y].mean())
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return cost / min(c_miss * p_target, c_fa * (1.0 - p_target))


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
