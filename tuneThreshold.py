"""Speaker-verification metrics: EER, minDCF and the DET curve, as pure vectorised NumPy.

Convention: a trial is accepted when ``score >= threshold``; label 1 is a target (same speaker) trial, label 0 a
non-target. FNR (miss, false rejection) is the fraction of targets rejected, FPR (false alarm, false acceptance)
the fraction of non-targets accepted. The error curve has one point per distinct score (tied trials form one
point) plus a final point at +inf (reject all).

Everything starts from one sort of the target and one of the non-target scores (``_split_sorted``); the rates at
any threshold are then two binary searches. The metrics never build the whole curve: the EER is found by
bisection, minDCF from the few candidate thresholds that can be optimal, voxceleb_trainer's EER from the ROC
points next to the crossing. The whole curve (``error_curve``, ``det_curve``, ``tuneThresholdfromScore``) is a
linear merge of the two sorted arrays.

The functions ``tuneThresholdfromScore``, ``ComputeErrorRates`` and ``ComputeMinDcf`` keep voxceleb_trainer's
names, signatures and numbers (without sklearn at run time), so existing scripts keep working.
"""

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)


class _Sorted(NamedTuple):
    """The scores of each class, ascending (float64)."""

    tar: np.ndarray  # (n_target,)
    non: np.ndarray  # (n_nontarget,)


class _Counts(NamedTuple):
    """Error counts at every distinct score."""

    thresholds: np.ndarray  # (K,) distinct scores, ascending, float64
    tar_below: np.ndarray  # (K,) int64, target trials with score < threshold (rejected targets)
    non_below: np.ndarray  # (K,) int64, non-target trials with score < threshold (rejected non-targets)
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


def _split_sorted(s: np.ndarray, is_target: np.ndarray) -> _Sorted:
    """Target and non-target scores, each sorted (validated inputs). ``np.compress`` is several times faster
    than boolean indexing, and two sorts of halves cost less than one of the whole."""
    tar = np.compress(is_target, s)
    tar.sort()
    non = np.compress(~is_target, s)
    non.sort()
    return _Sorted(tar, non)


def _rates(sc: _Sorted, threshold: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fnr, fpr) when accepting ``score >= threshold``; scalar or array thresholds (+inf rejects all)."""
    fnr = np.searchsorted(sc.tar, threshold, side="left") / sc.tar.size
    fpr = (sc.non.size - np.searchsorted(sc.non, threshold, side="left")) / sc.non.size
    return fnr, fpr


def _sorted_counts(sc: _Sorted) -> _Counts:
    """Counts at every distinct score: the two sorted arrays merged as complex numbers ``score + 1j * label`` by
    a stable sort (timsort merges two sorted runs in one linear pass); the labels' cumulative sum counts the
    targets. No argsort, no binary search."""
    n_target, n = sc.tar.size, sc.tar.size + sc.non.size
    merged = np.empty(n, dtype=np.complex128)  # real: score, imag: 1.0 for a target
    merged.real[:n_target] = sc.tar
    merged.imag[:n_target] = 1.0
    merged.real[n_target:] = sc.non
    merged.imag[n_target:] = 0.0
    merged.sort(kind="stable")
    values, target = merged.real, merged.imag
    cum_target = np.cumsum(target)  # targets among the first i + 1 sorted trials (exact below 2**53)
    cum_target -= target  # ... among the first i
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(values[1:], values[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)  # first trial of each tie group
    tar_below = cum_target[starts].astype(np.int64)
    non_below = starts - tar_below  # trials strictly below a threshold = index of its tie group's first trial
    return _Counts(values[starts], tar_below, non_below, n_target, n - n_target)


def _error_curve(c: _Counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fnr, fpr, thresholds), thresholds ascending with a final +inf (reject all)."""
    fnr = np.append(c.tar_below, c.n_target) / c.n_target
    fpr = (c.n_nontarget - np.append(c.non_below, c.n_nontarget)) / c.n_nontarget
    return fnr, fpr, np.append(c.thresholds, np.inf)


def _roc_curve(c: _Counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn.metrics.roc_curve(labels, scores, pos_label=1) with drop_intermediate=True, bit for bit.

    Points in decreasing threshold order; a point is dropped when it is collinear with its two neighbours
    (zero second difference of both the false- and the true-positive counts); then (0, 0) at +inf is prepended.
    """
    keep = slice(None)
    if c.thresholds.size > 2:  # a second difference is zero on the reversed curve iff it is on this one
        keep = np.flatnonzero(
            np.concatenate(([True], (np.diff(c.non_below, 2) != 0) | (np.diff(c.tar_below, 2) != 0), [True]))
        )
    tps = (c.n_target - c.tar_below[keep][::-1]).astype(np.float64)  # targets with score >= threshold
    fps = (c.n_nontarget - c.non_below[keep][::-1]).astype(np.float64)
    thresholds = c.thresholds[keep][::-1]
    tps = np.concatenate(([0.0], tps))
    fps = np.concatenate(([0.0], fps))
    thresholds = np.concatenate(([np.inf], thresholds))
    return fps / fps[-1], tps / tps[-1], thresholds


def _first_above(values: np.ndarray, sc: _Sorted) -> float:
    """The smallest of the sorted ``values`` where FNR - FPR >= 0 (+inf if none), by bisection: FNR - FPR is
    non-decreasing in the threshold."""
    lo, hi = 0, values.size
    while lo < hi:
        mid = (lo + hi) // 2
        fnr, fpr = _rates(sc, values[mid])
        if fnr - fpr >= 0:
            hi = mid
        else:
            lo = mid + 1
    return float(values[lo]) if lo < values.size else np.inf


def _point_below(sc: _Sorted, threshold: float) -> float:
    """The largest score below ``threshold`` (the curve's previous point); -inf if none."""
    below = [a[i - 1] for a in sc if (i := int(np.searchsorted(a, threshold, side="left"))) > 0]
    return float(max(below)) if below else -np.inf


def _eer(sc: _Sorted) -> tuple[float, float, float, float]:
    """(EER fraction, its threshold, the thresholds of the curve points before and at/after the crossing).

    The first point with FNR - FPR >= 0 is the smaller of the first such target score and non-target score
    (bisection of each); the point before it is the next smaller score. The curve is taken as linear between the
    two (see ``compute_eer``)."""
    hi = min(_first_above(sc.tar, sc), _first_above(sc.non, sc))
    lo = _point_below(sc, hi)  # exists: at the lowest score FNR - FPR = -1
    (fnr0, fnr1), (fpr0, fpr1) = _rates(sc, np.array([lo, hi]))
    d0, d1 = fnr0 - fpr0, fnr1 - fpr1
    if d1 == 0:
        return float(fnr1), hi, lo, hi
    alpha = -d0 / (d1 - d0)  # in (0, 1]: fraction of the way from the point before to the point after
    threshold = lo + alpha * (hi - lo) if np.isfinite(hi) else lo
    return float(fnr0 + alpha * (fnr1 - fnr0)), float(threshold), lo, hi


def _min_dcf(sc: _Sorted, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    """Normalised minDCF and its threshold (the lowest optimal one), from the candidate thresholds only.

    Raising the threshold past non-targets only lowers the cost, so an optimum is the +inf point or a target
    score; between two consecutive non-target scores FPR is fixed and the lowest target score is best. A
    threshold with m or more non-targets above costs at least c_fa (1 - p) m / n_non, more than rejecting all
    (c_miss p) once m > c_miss p n_non / (c_fa (1 - p)). So the candidates are the lowest target score, the
    lowest target score above each of the top m non-target scores, and +inf.
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be > 0, got c_miss={c_miss}, c_fa={c_fa}")
    n_tar, n_non = sc.tar.size, sc.non.size
    m = int(min(n_non, np.floor(c_miss * p_target * n_non / (c_fa * (1.0 - p_target))) + 2))
    first = np.searchsorted(sc.tar, sc.non[n_non - m :], side="right")  # first target above each
    first = np.concatenate(([0], first[first < n_tar]))
    first = first[np.concatenate(([True], first[1:] != first[:-1]))]  # ascending, distinct
    thresholds = np.append(sc.tar[first], np.inf)
    fnr, fpr = _rates(sc, thresholds)
    c_det = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    i = int(np.argmin(c_det))
    c_default = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(c_det[i] / c_default), float(thresholds[i])


def _window(sc: _Sorted, center: float, width: int) -> tuple[np.ndarray, bool]:
    """The distinct scores around ``center`` (up to ``width`` of each class on each side) that form a complete
    run of the curve's thresholds, and whether that run reaches the highest score."""
    parts, lo, hi = [], -np.inf, np.inf
    for a in sc:
        i = int(np.searchsorted(a, center, side="left"))
        start, stop = max(i - width, 0), min(i + width, a.size)
        parts.append(a[start:stop])
        if start > 0:  # scores of this class below a[start] are missing: the run starts there
            lo = max(lo, float(a[start]))
        if stop < a.size:
            hi = min(hi, float(a[stop - 1]))
    values = np.unique(np.concatenate(parts))
    return values[(values >= lo) & (values <= hi)], hi == np.inf


def _eer_voxceleb_trainer(sc: _Sorted, hi: float) -> float:
    """voxceleb_trainer's EER (fraction): max(FPR, FNR) at the point of sklearn's ROC curve (intermediate points
    dropped) where |FNR - FPR| is smallest, the first such point in decreasing threshold order.

    ``hi``: the threshold of the first curve point with FNR - FPR >= 0 (from ``_eer``). FNR - FPR increases
    along the curve, so the answer is the first ROC point at or above ``hi`` or the last one below it. The ROC
    keeps the lowest and highest scores, the +inf point and every point not collinear with its neighbours:
    moving from point g to g + 1 rejects the trials scoring exactly threshold g, so point g is dropped when the
    trials at thresholds g - 1 and g have the same numbers of targets and non-targets. Both points are looked up
    in a window around the crossing that grows until it holds them. Rates use sklearn's arithmetic
    (fpr = fps / n_non, fnr = 1 - tps / n_tar).
    """
    lowest, highest = min(sc.tar[0], sc.non[0]), max(sc.tar[-1], sc.non[-1])
    width = 16
    while True:
        values, to_top = _window(sc, hi, width)  # holds the point before hi (each side has >= 1 score)
        count = np.stack(
            [np.searchsorted(a, values, side="right") - np.searchsorted(a, values, side="left") for a in sc]
        )  # (2, V) targets and non-targets scoring each value
        kept = (values == lowest) | (values == highest)
        kept[1:] |= np.any(count[:, 1:] != count[:, :-1], axis=0)
        if values[0] != lowest:
            kept[0] = False  # unknown: its predecessor is outside the window; the search below then grows
        up = np.flatnonzero((values >= hi) & kept)
        down = np.flatnonzero((values < hi) & kept)
        if (up.size or to_top) and (down.size and (down[-1] > 0 or values[0] == lowest)):
            break
        width *= 4
    best = None
    for t in (values[up[0]] if up.size else np.inf, values[down[-1]]):  # higher threshold first
        tps = sc.tar.size - int(np.searchsorted(sc.tar, t, side="left"))  # +inf: 0
        fps = sc.non.size - int(np.searchsorted(sc.non, t, side="left"))
        roc_fpr, roc_fnr = float(fps) / sc.non.size, 1.0 - float(tps) / sc.tar.size
        dist = abs(roc_fnr - roc_fpr)
        if best is None or dist < best[0]:
            best = (dist, max(roc_fpr, roc_fnr))
    return best[1]


def error_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every distinct threshold.

    scores, labels: (N,) with labels 0/1 (1 = target). Returns (fnr, fpr, thresholds), each (K+1,) for K distinct
    scores: thresholds ascending (accept when score >= threshold); the first point (threshold = lowest score)
    accepts all (fnr 0, fpr 1), the last (threshold +inf) rejects all (fnr 1, fpr 0). Tied scores form one point.
    """
    return _error_curve(_sorted_counts(_split_sorted(*_check_inputs(scores, labels))))


def rates_at(scores: ArrayLike, labels: ArrayLike, thresholds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) when accepting ``score >= threshold``, for each of ``thresholds`` (any shape; +inf rejects
    all). E.g. the operating points of the EER and minDCF thresholds on a DET curve."""
    sc = _split_sorted(*_check_inputs(scores, labels))
    fnr, fpr = _rates(sc, np.asarray(thresholds, dtype=np.float64))
    return fpr, fnr


def compute_eer(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Equal error rate in percent and its threshold.

    The error curve is taken as piecewise linear between consecutive points of ``error_curve``; the EER is where
    it crosses FNR = FPR: with the bracketing points k-1 (FNR < FPR) and k (FNR >= FPR) and
    alpha = -d[k-1] / (d[k] - d[k-1]) for d = FNR - FPR, EER = FNR[k-1] + alpha (FNR[k] - FNR[k-1]) (= the FPR
    there). The threshold is interpolated the same way (the lower one when the upper is the +inf end point).
    """
    eer, threshold, _, _ = _eer(_split_sorted(*_check_inputs(scores, labels)))
    return 100.0 * eer, threshold


def compute_min_dcf(
    scores: ArrayLike, labels: ArrayLike, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float]:
    """Normalised minimum detection cost and its threshold.

    min over thresholds of c_miss * p_target * FNR + c_fa * (1 - p_target) * FPR, divided by
    min(c_miss * p_target, c_fa * (1 - p_target)) (the cost of the best fixed decision), so it is <= 1.
    The threshold is the lowest optimal one; +inf when rejecting all trials is optimal.
    """
    return _min_dcf(_split_sorted(*_check_inputs(scores, labels)), p_target, c_miss, c_fa)


def compute_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    p_targets: Sequence[float] = (0.01, 0.05),
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> dict[str, float | int]:
    """All verification metrics from one sort of each class (10^7 trials in well under a second).

    Keys: eer_percent, eer_threshold (interpolated EER, see ``compute_eer``), eer_vt_percent (voxceleb_trainer's
    EER: max(FPR, FNR) at the sklearn ROC point where |FNR - FPR| is smallest), min_dcf_p<p> and
    min_dcf_p<p>_threshold for each p in p_targets (e.g. min_dcf_p0.01), dcf_c_miss, dcf_c_fa, n_trials,
    n_target, n_nontarget.
    """
    sc = _split_sorted(*_check_inputs(scores, labels))
    eer, eer_threshold, _, hi = _eer(sc)
    metrics: dict[str, float | int] = {
        "eer_percent": 100.0 * eer,
        "eer_threshold": eer_threshold,
        "eer_vt_percent": 100.0 * _eer_voxceleb_trainer(sc, hi),
    }
    for p in p_targets:
        key = f"min_dcf_p{float(p)}"
        metrics[key], metrics[f"{key}_threshold"] = _min_dcf(sc, float(p), c_miss, c_fa)
    metrics.update(
        dcf_c_miss=float(c_miss),
        dcf_c_fa=float(c_fa),
        n_trials=sc.tar.size + sc.non.size,
        n_target=sc.tar.size,
        n_nontarget=sc.non.size,
    )
    return metrics


def det_curve(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, fnr) of the DET curve, thresholds ascending (fpr decreasing, fnr increasing).

    Saturated points are trimmed: the curve starts at the last point with fnr = 0 and ends at the first with
    fpr = 0, so only those two end points map to -inf on normal-deviate (probit) axes; clip before plotting.
    """
    fnr, fpr, _ = error_curve(scores, labels)
    first = int(np.searchsorted(fnr, 0.0, side="right")) - 1  # fnr[0] == 0, so first >= 0
    last = int(np.argmax(fpr == 0))  # fpr[-1] == 0
    return fpr[first : last + 1], fnr[first : last + 1]


# ---- voxceleb_trainer's functions, same names, signatures and numbers -------------------------------------


def tuneThresholdfromScore(
    scores: ArrayLike, labels: ArrayLike, target_fa: Sequence[float], target_fr: Sequence[float] | None = None
) -> tuple[list[list[float]], float, np.ndarray, np.ndarray]:
    """voxceleb_trainer's threshold tuning on the sklearn ROC curve (without sklearn).

    Returns (tuned, eer_percent, fpr, fnr): tuned is [threshold, fpr, fnr] at the ROC point nearest each
    target_fr (FNR) then each target_fa (FPR); eer_percent = 100 max(FPR, FNR) at the point where |FNR - FPR| is
    smallest; fpr, fnr are the ROC points (decreasing threshold, first threshold +inf).
    """
    fpr, tpr, thresholds = _roc_curve(_sorted_counts(_split_sorted(*_check_inputs(scores, labels))))
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
    """voxceleb_trainer's (Kaldi's) per-trial error rates.

    Trials are sorted by score (stable, ascending); for sorted trial i, fnrs[i] is the fraction of targets among
    trials 0..i and fprs[i] is 1 - the fraction of non-targets among trials 0..i; thresholds are the sorted
    scores. One point per trial, ties not merged, as in the original.
    """
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
    """voxceleb_trainer's (Kaldi's) minDCF from ``ComputeErrorRates`` output: (min_dcf, threshold).

    c_det = c_miss fnr p_target + c_fa fpr (1 - p_target), first minimum, divided by
    min(c_miss p_target, c_fa (1 - p_target)) (NIST SRE 2016 plan, section 3).
    """
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
