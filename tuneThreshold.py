"""Speaker-verification metrics in vectorised NumPy: EER, minDCF, the DET curve and, for log-likelihood ratios, Cllr and
the actual DCF.

A trial is accepted when ``score >= threshold``; label 1 is a target trial. FNR is the fraction of targets rejected, FPR
of non-targets accepted. ``_curve`` builds the error curve (one point per distinct score, plus +inf: reject all) and
every metric is read off it. The file runs past 300 lines because it also keeps voxceleb_trainer's function names,
signatures and numbers (``tuneThresholdfromScore``, ``ComputeErrorRates``, ``ComputeMinDcf``) for scripts that import
them from here.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike


class _Curve(NamedTuple):
    """The error curve: K distinct scores ascending, then +inf (reject all); K + 1 points."""

    thresholds: np.ndarray  # (K+1,) float64
    tar_below: np.ndarray  # (K+1,) float64 counts (exact integers): targets with score < threshold (rejected)
    non_below: np.ndarray  # (K+1,) float64 counts: non-targets with score < threshold (rejected)
    fnr: np.ndarray  # (K+1,) tar_below / n_target, from 0 to 1
    fpr: np.ndarray  # (K+1,) 1 - non_below / n_nontarget, from 1 to 0
    n_target: int
    n_nontarget: int


def _check_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: scores -> float64 (N,), labels -> bool (N,) (True = target)."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scores must be numbers, got {type(scores).__name__}: {err}") from err
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {lab.shape}")
    if s.shape != lab.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} scores, {lab.size} labels")
    if s.size == 0:
        raise ValueError("no trials: scores and labels are empty")
    if lab.dtype == np.bool_:
        is_target = lab
    else:
        if not np.issubdtype(lab.dtype, np.number):
            raise ValueError(f"labels must be 0 (non-target) or 1 (target), got dtype {lab.dtype}")
        is_target = lab == 1
        bad = (lab != 0) ^ is_target  # neither 0 nor 1
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"labels must be 0 (non-target) or 1 (target); labels[{i}] = {lab[i]!r} "
                f"({int(bad.sum())} invalid labels)"
            )
    finite = np.isfinite(s) if not np.isfinite(s.sum()) else None  # one reduction when all are finite
    if finite is not None and not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"scores must be finite; scores[{i}] = {s[i]!r} ({int((~finite).sum())} non-finite)")
    n_target = int(np.count_nonzero(is_target))
    if n_target == 0 or n_target == is_target.size:
        missing = "target (label 1)" if n_target == 0 else "non-target (label 0)"
        raise ValueError(f"no {missing} trials among {is_target.size}: both classes are needed for error rates")
    return s, is_target


def _curve(scores: ArrayLike, labels: ArrayLike) -> _Curve:
    """The error curve of validated scores, labels (N,): both classes sorted apart, merged by a stable sort."""
    s, is_target = _check_inputs(scores, labels)
    tar = np.compress(is_target, s)
    tar.sort()
    non = np.compress(~is_target, s)
    non.sort()
    n_target, n = tar.size, s.size
    merged = np.empty(n, dtype=np.complex128)  # real: score, imag: 1.0 for a target
    merged.real[:n_target] = tar
    merged.imag[:n_target] = 1.0
    merged.real[n_target:] = non
    merged.imag[n_target:] = 0.0
    merged.sort(kind="stable")
    values = merged.real
    below = np.empty(n + 1)  # below[i]: targets among the first i sorted trials (exact below 2**53)
    below[0] = 0.0
    np.cumsum(merged.imag, out=below[1:])
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(values[1:], values[:-1], out=new_group[1:])
    if new_group.all():  # every score distinct: trial i is curve point i
        thresholds = np.empty(n + 1)
        thresholds[:n] = values
        tar_below = below
        non_below = np.arange(n + 1, dtype=np.float64)
    else:
        starts = np.append(np.flatnonzero(new_group), n)  # first trial of each tie group, then the end
        thresholds = values[starts[:-1]]
        thresholds = np.append(thresholds, 0.0)
        tar_below = below[starts]
        non_below = starts.astype(np.float64)
    thresholds[-1] = np.inf
    non_below -= tar_below  # trials below a threshold = index of its tie group's first trial, less the targets
    n_non = n - n_target
    fpr = n_non - non_below
    fpr /= n_non
    return _Curve(thresholds, tar_below, non_below, tar_below / n_target, fpr, n_target, n_non)


def _roc_curve(c: _Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn.metrics.roc_curve(labels, scores, pos_label=1, drop_intermediate=True), bit for bit."""
    tar_below, non_below, thresholds = c.tar_below[:-1], c.non_below[:-1], c.thresholds[:-1]
    keep = slice(None)
    if thresholds.size > 2:  # a second difference is zero on the reversed curve iff it is on this one
        keep = np.flatnonzero(
            np.concatenate(([True], (np.diff(non_below, 2) != 0) | (np.diff(tar_below, 2) != 0), [True]))
        )
    tps = c.n_target - tar_below[keep][::-1]  # targets with score >= threshold
    fps = c.n_nontarget - non_below[keep][::-1]
    tps = np.concatenate(([0.0], tps))
    fps = np.concatenate(([0.0], fps))
    return fps / fps[-1], tps / tps[-1], np.concatenate(([np.inf], thresholds[keep][::-1]))


def _crossing(c: _Curve) -> tuple[np.ndarray, int]:
    """(d = FNR - FPR (K+1,), k): d rises from -1 to 1 along the curve; k >= 1 is its first point with d >= 0."""
    d = c.fnr - c.fpr
    return d, int(np.argmax(d >= 0))


def _eer(c: _Curve, d: np.ndarray, k: int) -> tuple[float, float]:
    """(EER fraction, its threshold): see ``compute_eer``; ``d``, ``k`` from ``_crossing``."""
    if d[k] == 0:
        return float(c.fnr[k]), float(c.thresholds[k])
    lo, hi = c.thresholds[k - 1], c.thresholds[k]
    alpha = -d[k - 1] / (d[k] - d[k - 1])  # in (0, 1]: fraction of the way from point k - 1 to point k
    threshold = lo + alpha * (hi - lo) if np.isfinite(hi) else lo
    return float(c.fnr[k - 1] + alpha * (c.fnr[k] - c.fnr[k - 1])), float(threshold)


def _min_dcf(c: _Curve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    """Normalised minDCF over the curve's points and its threshold (the lowest optimal one)."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be > 0, got c_miss={c_miss}, c_fa={c_fa}")
    c_det = c_miss * p_target * c.fnr + c_fa * (1.0 - p_target) * c.fpr
    i = int(np.argmin(c_det))
    c_default = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(c_det[i] / c_default), float(c.thresholds[i])


def _eer_voxceleb_trainer(c: _Curve, d: np.ndarray, k: int) -> float:
    """voxceleb_trainer's EER (fraction): max(FPR, FNR) where |FNR - FPR| is least on sklearn's ROC."""
    last = c.thresholds.size - 1  # the +inf point (the ROC's first, always kept); finite points 0 .. last - 1
    width = 64
    while True:
        lo, hi = max(k - width, 0), min(k + width, last + 1)
        kept = np.ones(hi - lo, dtype=bool)  # the lowest and highest scores and +inf are kept
        a, b = max(lo, 1), min(hi, last - 1)  # interior finite points: kept unless collinear with both neighbours
        if a < b:
            kept[a - lo:b - lo] = np.any([x[a + 1:b + 1] - 2 * x[a:b] + x[a - 1:b - 1] != 0
                                          for x in (c.tar_below, c.non_below)], axis=0)
        points = np.flatnonzero(kept) + lo
        if points.size == 0 or not points[0] < k <= points[-1]:  # no kept point on one side yet
            width *= 4
            continue
        fpr = (c.n_nontarget - c.non_below[points]) / c.n_nontarget
        fnr = 1 - (c.n_target - c.tar_below[points]) / c.n_target
        dist = np.absolute(fnr - fpr)
        best = dist.min()
        bounded = (lo == 0 or abs(d[lo]) > best + 1e-12) and (hi == last + 1 or abs(d[hi - 1]) > best + 1e-12)
        if bounded:
            i = points.size - 1 - int(np.argmin(dist[::-1]))  # the first minimum in decreasing threshold order
            return float(max(fpr[i], fnr[i]))
        width *= 4


def error_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fnr, fpr, thresholds), each (K+1,) for K distinct scores; thresholds ascending, last +inf."""
    c = _curve(scores, labels)
    return c.fnr, c.fpr, c.thresholds


def rates_at(scores: ArrayLike, labels: ArrayLike, thresholds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) accepting ``score >= threshold`` for each of ``thresholds`` (any shape; +inf rejects all)."""
    c = _curve(scores, labels)
    k = np.searchsorted(c.thresholds, np.asarray(thresholds, dtype=np.float64), side="left")  # first point >= t
    return c.fpr[k], c.fnr[k]


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """EER in percent and its threshold, interpolated linearly where FNR - FPR changes sign."""
    c = _curve(scores, labels)
    eer, threshold = _eer(c, *_crossing(c))
    return 100.0 * eer, threshold


def compute_min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost (<= 1) and its lowest optimal threshold (+inf: reject all)."""
    return _min_dcf(_curve(scores, labels), p_target, c_miss, c_fa)


def compute_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    p_targets: Sequence[float] = (0.01, 0.05),
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict[str, float | int]:
    """All metrics from one error curve: eer_percent, eer_threshold, eer_vt_percent, min_dcf_p<p> and
    min_dcf_p<p>_threshold per p_target, dcf_c_miss, dcf_c_fa, n_trials, n_target, n_nontarget."""
    c = _curve(scores, labels)
    d, k = _crossing(c)
    eer, eer_threshold = _eer(c, d, k)
    metrics: dict[str, float | int] = {
        "eer_percent": 100.0 * eer,
        "eer_threshold": eer_threshold,
        "eer_vt_percent": 100.0 * _eer_voxceleb_trainer(c, d, k),
    }
    for p in p_targets:
        key = f"min_dcf_p{float(p)}"
        metrics[key], metrics[f"{key}_threshold"] = _min_dcf(c, float(p), c_miss, c_fa)
    metrics.update(
        dcf_c_miss=float(c_miss),
        dcf_c_fa=float(c_fa),
        n_trials=c.n_target + c.n_nontarget,
        n_target=c.n_target,
        n_nontarget=c.n_nontarget,
    )
    return metrics


def cllr(llrs: ArrayLike, labels: ArrayLike) -> float:
    """Log-likelihood-ratio cost in bits (Brümmer 2010): 0 perfect, 1 uninformative, above 1 misleading."""
    s, y = _check_inputs(llrs, labels)
    return float((np.logaddexp(0.0, -s[y]).mean() + np.logaddexp(0.0, s[~y]).mean()) / (2 * math.log(2.0)))


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The llr above which deciding 'target' costs less: log(C_fa (1 - p) / (C_miss p))."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must lie in (0, 1), got {p_target}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def actual_dcf(llrs: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0,
               c_fa: float = 1.0) -> float:
    """Detection cost at the llrs' Bayes threshold, normalised as minDCF (equal to it when calibrated)."""
    s, y = _check_inputs(llrs, labels)
    accept = s > bayes_threshold(p_target, c_miss, c_fa)
    p_miss, p_fa = float((~accept[y]).mean()), float(accept[~y].mean())
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return cost / min(c_miss * p_target, c_fa * (1.0 - p_target))


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) of the DET curve, thresholds ascending, saturated points trimmed (clip before probit)."""
    fnr, fpr, _ = error_curve(scores, labels)
    first = int(np.searchsorted(fnr, 0.0, side="right")) - 1  # fnr[0] == 0, so first >= 0
    last = int(np.argmax(fpr == 0))  # fpr[-1] == 0
    return fpr[first : last + 1], fnr[first : last + 1]


# ---- voxceleb_trainer's functions, same names, signatures and numbers -------------------------------------


def tuneThresholdfromScore(
    scores: ArrayLike, labels: ArrayLike, target_fa: Sequence[float], target_fr: Sequence[float] | None = None
) -> tuple[list[list[float]], float, np.ndarray, np.ndarray]:
    """voxceleb_trainer's threshold tuning: (tuned, eer_percent, fpr, fnr), tuned = [threshold, fpr, fnr] at the ROC
    point nearest each target_fr then target_fa."""
    fpr, tpr, thresholds = _roc_curve(_curve(scores, labels))
    fnr = 1 - tpr
    tuned = []
    if target_fr:
        for tfr in target_fr:
            i = np.nanargmin(np.absolute(tfr - fnr))
            tuned.append([thresholds[i], fpr[i], fnr[i]])
    for tfa in target_fa:
        i = np.nanargmin(np.absolute(tfa - fpr))
        tuned.append([thresholds[i], fpr[i], fnr[i]])
    i_eer = np.nanargmin(np.absolute(fnr - fpr))
    eer = max(fpr[i_eer], fnr[i_eer]) * 100
    return tuned, eer, fpr, fnr


def ComputeErrorRates(scores: ArrayLike, labels: ArrayLike) -> tuple[list[float], list[float], list[float]]:
    """voxceleb_trainer's (Kaldi's) per-trial (fnrs, fprs, thresholds): one point per sorted trial, ties not merged."""
    s, is_target = _check_inputs(scores, labels)
    order = np.argsort(s, kind="stable")
    y = is_target[order].astype(np.int64)
    n_target = int(y.sum())
    fnrs = np.cumsum(y) / float(n_target)
    fprs = 1 - np.cumsum(1 - y) / float(y.size - n_target)
    return fnrs.tolist(), fprs.tolist(), s[order].tolist()


def ComputeMinDcf(
    fnrs: ArrayLike, fprs: ArrayLike, thresholds: Sequence[float], p_target: float, c_miss: float, c_fa: float
) -> tuple[float, float]:
    """voxceleb_trainer's (Kaldi's) (min_dcf, threshold) (NIST SRE 2016 plan, section 3)."""
    fnrs = np.asarray(fnrs, dtype=np.float64)
    fprs = np.asarray(fprs, dtype=np.float64)
    if fnrs.ndim != 1 or fnrs.shape != fprs.shape or fnrs.size != len(thresholds) or fnrs.size == 0:
        raise ValueError(
            f"fnrs, fprs and thresholds must be non-empty 1-D of one length, got {fnrs.shape}, {fprs.shape} "
            f"and {len(thresholds)}"
        )
    c_det = c_miss * fnrs * p_target + c_fa * fprs * (1 - p_target)
    i = int(np.argmin(c_det))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[i]) / c_def, thresholds[i]
