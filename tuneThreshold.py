"""Speaker-verification metrics in vectorised NumPy: EER, minDCF, the DET curve and, for log-likelihood ratios, Cllr and
the actual DCF.

A trial is accepted when ``score >= threshold``; label 1 is a target trial. FNR is the fraction of targets rejected, FPR
of non-targets accepted. ``_curve`` builds the error curve (one point per distinct score, plus +inf: reject all) and
every metric is read off it. Confidence intervals come from a bootstrap that resamples speakers rather than trials
(Bolle, Ratha and Pankanti, CVIU 2004; Poh and Bengio, ICASSP 2007), read off weighted cumulative sums over the
once-sorted curve. The file runs past 300 lines because of that bootstrap and voxceleb_trainer's function names,
signatures and numbers (``tuneThresholdfromScore``, ``ComputeErrorRates``, ``ComputeMinDcf``), kept for scripts that
import them from here.
"""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from dtdysv.evaluation.qmf import bayes_threshold  # the decision rule of llrs, shared with the inference API


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


def _check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be > 0, got c_miss={c_miss}, c_fa={c_fa}")


def _min_dcf(c: _Curve, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    """Normalised minDCF over the curve's points and its threshold (the lowest optimal one)."""
    _check_costs(p_target, c_miss, c_fa)
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


# ---- bootstrap confidence intervals ---------------------------------------------------------------------------
# Trials are not independent: the trials of one speaker share that speaker's voice, so resampling trials as if
# they were gives intervals far too narrow. The resampling unit is the speaker (or, when the names do not say who
# speaks, the file), as in the "subsets bootstrap" of Bolle, Ratha and Pankanti (2004) and the user-level bootstrap
# of Poh and Bengio (2007): a resample draws the list's clusters with replacement, and a trial counts once per draw
# of its cluster when both sides lie in one cluster (a target trial of a drawn speaker), and once per pair of draws
# when they lie in two (c_e * c_t: Owen's 2007 "pigeonhole" bootstrap of a crossed design). Intervals are basic
# bootstrap intervals (``basic_interval`` says why not percentile ones).

BOOTSTRAP_BLOCK = 64  # resamples drawn and evaluated together; fixed, so that a seed gives the same draws anywhere
_SLAB = 1 << 13  # trials weighted at a time: their weights and segment sums stay in cache


def trial_clusters(enroll: Sequence[str], test: Sequence[str],
                   labels: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The resampling unit of both sides of every trial: (enroll clusters (N,), test clusters (N,), unit).

    unit "speaker": a name's first folder ('id10270' of 'id10270/x6uYqmx31kE/00001.wav'), used when every name has
    one and, given labels, every target trial's two names share it and no non-target trial's do; else "file": the
    name itself. Cluster ids are 0 .. C-1 in order of first appearance (enroll before test, trial by trial).
    """
    if len(enroll) != len(test):
        raise ValueError(f"enroll and test differ in length: {len(enroll)} and {len(test)} names")
    names = [name for pair in zip(enroll, test, strict=True) for name in pair]  # e0, t0, e1, t1, ...
    unit = "speaker" if all("/" in name.strip("/") for name in names) else "file"
    if unit == "speaker":
        speakers = [name.strip("/").split("/", 1)[0] for name in names]
        if labels is not None:
            same = np.array([e == t for e, t in zip(speakers[0::2], speakers[1::2], strict=True)])
            if not np.array_equal(same, np.asarray(labels) == 1):
                unit = "file"  # the first folder is not the speaker: some targets cross it or non-targets share it
        names = speakers if unit == "speaker" else names
    ids: dict[str, int] = {}
    clusters = np.fromiter((ids.setdefault(name, len(ids)) for name in names), dtype=np.int64, count=len(names))
    return clusters[0::2].copy(), clusters[1::2].copy(), unit


class _Resampler(NamedTuple):
    """What every resample of one score list shares: the error curve reduced to the points where it turns.

    A run of tie groups holding only targets (or only non-targets) is a straight segment of the curve under any
    weighting, so only the M + 1 points where the run changes, and both ends, are kept; the trials between two kept
    points form a segment, and a resample needs only each segment's weight per class (a sparse sum).
    """

    slabs: list[tuple[int, int, int, object]]  # (first trial, end trial, first row, CSR (rows, trials) of ones)
    first: np.ndarray  # (N,) enroll cluster of each trial, trials ordered by row (class, then segment)
    second: np.ndarray  # (N,) test cluster, or n_clusters (a count of 1) when both sides lie in one cluster
    n_segments: int  # M; row j < M sums the targets of segment j, row M + j its non-targets
    candidates: np.ndarray  # the kept points where minDCF can be reached
    n_clusters: int


def _resampler(scores: ArrayLike, labels: ArrayLike, clusters_enroll: ArrayLike,
               clusters_test: ArrayLike) -> _Resampler:
    """The ``_Resampler`` of a score list: one sort of the scores, its turning points, the trials' segment rows."""
    from scipy.sparse import csr_matrix

    s, is_target = _check_inputs(scores, labels)
    ce, ct = np.asarray(clusters_enroll), np.asarray(clusters_test)
    if ce.shape != s.shape or ct.shape != s.shape:
        raise ValueError(f"clusters_enroll and clusters_test must be ({s.size},) like the scores, got {ce.shape} "
                         f"and {ct.shape}")
    ids, both = np.unique(np.concatenate((ce, ct)), return_inverse=True)  # any labels -> 0 .. C-1
    n_clusters, ce, ct = ids.size, both[:s.size], both[s.size:]
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    group = np.empty(s.size, dtype=np.int64)  # tie group of each trial (point g: every group < g rejected)
    group[order] = np.cumsum(np.concatenate(([False], sorted_s[1:] != sorted_s[:-1])))
    n_groups = int(group.max()) + 1
    has_tar = np.bincount(group, weights=is_target, minlength=n_groups) > 0
    has_non = np.bincount(group, weights=~is_target, minlength=n_groups) > 0
    pure_tar, pure_non = has_tar & ~has_non, has_non & ~has_tar
    straight = (pure_tar[:-1] & pure_tar[1:]) | (pure_non[:-1] & pure_non[1:])  # point g between two like groups
    points = np.concatenate(([0], np.flatnonzero(~straight) + 1, [n_groups]))
    # minDCF falls when a non-target is passed and rises when a target is, so its minimum lies at a point after a
    # group with a non-target and before one with a target, or at an end
    inner = points[1:-1]
    keep = has_non[inner - 1] & has_tar[inner]
    candidates = np.concatenate(([0], np.flatnonzero(keep) + 1, [points.size - 1]))
    n_seg = points.size - 1
    row = np.searchsorted(points, group, side="right") - 1 + n_seg * ~is_target
    by_row = np.argsort(row, kind="stable")
    row = row[by_row]
    slabs = []
    for a in range(0, s.size, _SLAB):
        b = min(a + _SLAB, s.size)
        r0 = int(row[a])
        matrix = csr_matrix((np.ones(b - a, dtype=np.float32), (row[a:b] - r0, np.arange(b - a))),
                            shape=(int(row[b - 1]) - r0 + 1, b - a))
        slabs.append((a, b, r0, matrix))
    second = np.where(ce == ct, n_clusters, ct)[by_row]
    return _Resampler(slabs, ce[by_row], second, n_seg, candidates, n_clusters)


def _draw_counts(rng: np.random.Generator, n_clusters: int, n: int) -> np.ndarray:
    """(n_clusters + 1, n) float32: how often each cluster is drawn in each of n resamples, then a row of ones."""
    draws = rng.integers(0, n_clusters, size=(n, n_clusters)) + n_clusters * np.arange(n)[:, None]
    counts = np.ones((n_clusters + 1, n), dtype=np.float32)
    counts[:-1] = np.bincount(draws.ravel(), minlength=n * n_clusters).reshape(n, n_clusters).T
    return counts


def _weights_below(plan: _Resampler, counts: np.ndarray) -> np.ndarray:
    """(R, 2, M + 1) float32: the weight of the targets ([:, 0]) and non-targets ([:, 1]) below each kept point.

    counts: (C + 1, R) from ``_draw_counts``. A trial's weight in resample r is counts[first, r] *
    counts[second, r]; weights and their sums are integers, exact in float32 while a class weighs under 2**24
    (lists of millions of trials), within 1e-7 beyond.
    """
    n_res, m = counts.shape[1], plan.n_segments
    sums = np.zeros((n_res, 2 * m), dtype=np.float32)
    for a, b, r0, matrix in plan.slabs:
        weights = np.take(counts, plan.first[a:b], axis=0)  # (trials, R)
        weights *= np.take(counts, plan.second[a:b], axis=0)
        sums[:, r0:r0 + matrix.shape[0]] += (matrix @ weights).T
    below = np.zeros((n_res, 2, m + 1), dtype=np.float32)
    np.cumsum(sums.reshape(n_res, 2, m), axis=2, out=below[:, :, 1:])
    return below


def _resampled_metrics(plan: _Resampler, counts: np.ndarray, p_targets: Sequence[float], c_miss: float,
                       c_fa: float) -> np.ndarray:
    """(1 + len(p_targets), R): EER (fraction) and minDCF per resample, NaN where a class drew no trial."""
    below = _weights_below(plan, counts)
    tar, non = below[:, 0], below[:, 1]
    n_tar, n_non = tar[:, -1:].astype(np.float64), non[:, -1:].astype(np.float64)
    invalid = (n_tar[:, 0] == 0) | (n_non[:, 0] == 0)
    n_tar[invalid], n_non[invalid] = 1.0, 1.0  # computed on like the others (no copy of the valid rows), then NaN
    # (FNR - FPR) * n_tar * n_non, exact integers, rises along the curve: the EER lies between point k - 1 and the
    # first point k where it is >= 0, as in _eer
    k = np.count_nonzero(tar * n_non + non * n_tar < n_tar * n_non, axis=1)[:, None].clip(1, plan.n_segments)
    t_lo, t_hi, n_lo, n_hi = (np.take_along_axis(x, j, 1).astype(np.float64) for x in (tar, non) for j in (k - 1, k))
    d_lo, d_hi = t_lo * n_non + n_lo * n_tar - n_tar * n_non, t_hi * n_non + n_hi * n_tar - n_tar * n_non
    out = np.empty((1 + len(p_targets), counts.shape[1]))
    with np.errstate(divide="ignore", invalid="ignore"):  # only in invalid rows
        alpha = -d_lo / (d_hi - d_lo)
        out[0] = ((t_lo + alpha * (t_hi - t_lo)) / n_tar)[:, 0]
    fnr = tar[:, plan.candidates] / n_tar
    fpr = 1.0 - non[:, plan.candidates] / n_non
    for i, p in enumerate(p_targets, start=1):
        cost = (c_miss * p) * fnr + (c_fa * (1.0 - p)) * fpr
        out[i] = cost.min(axis=1) / min(c_miss * p, c_fa * (1.0 - p))
    out[:, invalid] = np.nan
    return out


def bootstrap_replicates(scores: ArrayLike, labels: ArrayLike, clusters_enroll: ArrayLike,
                         clusters_test: ArrayLike, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                         c_fa: float = 1.0, n_resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """The metrics of ``n_resamples`` cluster resamples: {"eer_percent": (R,), "min_dcf_p<p>": (R,) per p}.

    scores, labels, clusters_enroll, clusters_test: (N,), clusters as from ``trial_clusters``. The draws depend
    only on ``seed`` and the number of clusters, so two systems scored on one trial list (same clusters) get the
    same resamples: a paired bootstrap. NaN marks a resample that drew no target or no non-target trial.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    for p in p_targets:
        _check_costs(float(p), c_miss, c_fa)
    plan = _resampler(scores, labels, clusters_enroll, clusters_test)
    rng = np.random.default_rng(seed)
    parts = [_resampled_metrics(plan, _draw_counts(rng, plan.n_clusters, min(BOOTSTRAP_BLOCK, n_resamples - i)),
                                p_targets, c_miss, c_fa)
             for i in range(0, n_resamples, BOOTSTRAP_BLOCK)]
    values = np.concatenate(parts, axis=1)
    return {"eer_percent": 100.0 * values[0],
            **{f"min_dcf_p{float(p)}": values[i] for i, p in enumerate(p_targets, start=1)}}


def basic_interval(estimate: float, replicates: ArrayLike, level: float = 0.95,
                   bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval: 2 * estimate minus the (1 + level) / 2 and (1 - level) / 2
    quantiles of the finite ``replicates``, clipped to ``bounds``; (nan, nan) when none is finite.

    Resamples repeat speakers, so a resampled error curve is lumpier than the list's and its minimum (minDCF) lower:
    the replicates sit below the estimate as the estimate sits below the truth. The basic interval turns that shift
    around (Davison and Hinkley 1997, section 5.2), where the percentile interval would repeat it (simulated lists:
    tests/test_bootstrap.py).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray(replicates, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    q_lo, q_hi = np.quantile(v, [(1.0 - level) / 2, (1.0 + level) / 2])
    lo, hi = np.clip([2.0 * estimate - q_hi, 2.0 * estimate - q_lo], *bounds)
    return float(lo), float(hi)


def replicate_intervals(point: Mapping[str, float], replicates: Mapping[str, np.ndarray],
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """``basic_interval`` of every metric of ``replicates`` around its value in ``point`` (compute_metrics), clipped
    to the metric's range: EER 0-100 %, normalised minDCF 0-1."""
    return {key: basic_interval(float(point[key]), v, level, (0.0, 100.0 if key == "eer_percent" else 1.0))
            for key, v in replicates.items()}


def bootstrap_intervals(scores: ArrayLike, labels: ArrayLike, clusters_enroll: ArrayLike, clusters_test: ArrayLike,
                        p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0, c_fa: float = 1.0,
                        n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Basic bootstrap intervals of the EER (percent) and minDCF at each p_target, resampling clusters
    (``bootstrap_replicates``, ``basic_interval``): {"eer_percent": (lo, hi), "min_dcf_p<p>": (lo, hi), ...}."""
    reps = bootstrap_replicates(scores, labels, clusters_enroll, clusters_test, p_targets, c_miss, c_fa,
                                n_resamples, seed)
    return replicate_intervals(compute_metrics(scores, labels, p_targets, c_miss, c_fa), reps, level)


def difference_test(difference: float, replicates: ArrayLike, level: float = 0.95) -> dict[str, float | int]:
    """A paired bootstrap of a difference between two systems (B - A of one metric): ``difference`` on the list,
    ``replicates`` (R,) on resamples that are the same for both systems.

    Returns the basic interval (ci_low, ci_high) and a two-sided p-value for "no difference", the interval
    inverted: twice the smaller share of replicates on either side of 2 * difference (ties counted on both
    sides), as (1 + count) / (R + 1) so that it is never 0, capped at 1; it falls below 1 - level about when the
    interval excludes 0. Identical systems: difference 0, interval [0, 0], p 1. NaN replicates are left out.
    """
    d = np.asarray(replicates, dtype=np.float64)
    d = d[np.isfinite(d)]
    lo, hi = basic_interval(difference, d, level)
    if d.size == 0:
        return {"ci_low": lo, "ci_high": hi, "p_value": float("nan"), "resamples": 0}
    side = min(np.count_nonzero(d <= 2.0 * difference), np.count_nonzero(d >= 2.0 * difference))
    return {"ci_low": lo, "ci_high": hi, "p_value": min(1.0, 2.0 * (1 + side) / (d.size + 1)),
            "resamples": int(d.size)}
