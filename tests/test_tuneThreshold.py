"""Metrics: hand-computed cases, sklearn agreement, and voxceleb_trainer's original code as the reference."""

from operator import itemgetter

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import tuneThreshold as tt

# ---- voxceleb_trainer's tuneThreshold.py, transcribed literally (the reference) ----------------------------


def ref_tuneThresholdfromScore(scores, labels, target_fa, target_fr=None):
    fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr

    tunedThreshold = []
    if target_fr:
        for tfr in target_fr:
            idx = np.nanargmin(np.absolute(tfr - fnr))
            tunedThreshold.append([thresholds[idx], fpr[idx], fnr[idx]])

    for tfa in target_fa:
        idx = np.nanargmin(np.absolute(tfa - fpr))  # numpy.where(fpr<=tfa)[0][-1]
        tunedThreshold.append([thresholds[idx], fpr[idx], fnr[idx]])

    idxE = np.nanargmin(np.absolute(fnr - fpr))
    eer = max(fpr[idxE], fnr[idxE]) * 100

    return (tunedThreshold, eer, fpr, fnr)


def ref_ComputeErrorRates(scores, labels):
    sorted_indexes, thresholds = zip(
        *sorted([(index, threshold) for index, threshold in enumerate(scores)], key=itemgetter(1)), strict=True
    )
    labels = [labels[i] for i in sorted_indexes]
    fnrs = []
    fprs = []
    for i in range(0, len(labels)):
        if i == 0:
            fnrs.append(labels[i])
            fprs.append(1 - labels[i])
        else:
            fnrs.append(fnrs[i - 1] + labels[i])
            fprs.append(fprs[i - 1] + 1 - labels[i])
    fnrs_norm = sum(labels)
    fprs_norm = len(labels) - fnrs_norm
    fnrs = [x / float(fnrs_norm) for x in fnrs]
    fprs = [1 - x / float(fprs_norm) for x in fprs]
    return fnrs, fprs, thresholds


def ref_ComputeMinDcf(fnrs, fprs, thresholds, p_target, c_miss, c_fa):
    min_c_det = float("inf")
    min_c_det_threshold = thresholds[0]
    for i in range(0, len(fnrs)):
        c_det = c_miss * fnrs[i] * p_target + c_fa * fprs[i] * (1 - p_target)
        if c_det < min_c_det:
            min_c_det = c_det
            min_c_det_threshold = thresholds[i]
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    min_dcf = min_c_det / c_def
    return min_dcf, min_c_det_threshold


# ---- data ----------------------------------------------------------------------------------------------------


def random_trials(n: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping target/non-target scores; rounding creates many ties that mix both classes."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = rng.normal(size=n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, labels


CASES = [(50, 0, None), (1000, 1, None), (1000, 2, 1), (3000, 3, 2), (200, 4, 0)]


# ---- hand-computed cases --------------------------------------------------------------------------------------

S6 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
L6 = [0, 0, 1, 0, 1, 1]


def test_error_curve_hand_case():
    fnr, fpr, thr = tt.error_curve(S6, L6)
    np.testing.assert_array_equal(thr, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, np.inf])
    np.testing.assert_allclose(fnr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fpr, [1, 2 / 3, 1 / 3, 1 / 3, 0, 0, 0], rtol=0, atol=1e-15)


def test_error_curve_ties_make_one_point():
    fnr, fpr, thr = tt.error_curve([0.5, 1.0, 0.5, 0.5], [1, 1, 0, 0])
    np.testing.assert_array_equal(thr, [0.5, 1.0, np.inf])
    np.testing.assert_array_equal(fnr, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(fpr, [1.0, 0.0, 0.0])


def test_eer_exact_crossing():
    eer, thr = tt.compute_eer(S6, L6)
    assert eer == pytest.approx(100 / 3, abs=1e-12)
    assert thr == 0.4


def test_eer_interpolated_through_tie():
    # curve: (fnr, fpr) = (0, 1) @1, (0, 1/2) @2, (1/2, 0) @3, (1, 0) @inf; the tie at 2 (one target, one
    # non-target) is a diagonal segment crossing FNR = FPR half way: EER 25 %, threshold 2.5.
    scores, labels = [1.0, 2.0, 2.0, 3.0], [0, 1, 0, 1]
    eer, thr = tt.compute_eer(scores, labels)
    assert eer == pytest.approx(25.0, abs=1e-12)
    assert thr == pytest.approx(2.5, abs=1e-12)
    # voxceleb_trainer's definition takes max(FPR, FNR) at the nearest ROC point: 50 %.
    assert tt.compute_metrics(scores, labels)["eer_vt_percent"] == pytest.approx(50.0, abs=1e-12)
    assert ref_tuneThresholdfromScore(scores, labels, [])[1] == pytest.approx(50.0, abs=1e-12)


def test_eer_interpolated_unequal_steps():
    # (0,1)@1 (0,2/3)@2 (1/2,2/3)@3 (1/2,1/3)@4 ... : crossing between @3 (d=-1/6) and @4 (d=+1/6) -> 50 %, 3.5
    eer, thr = tt.compute_eer([1, 2, 3, 4, 5], [0, 1, 0, 0, 1])
    assert eer == pytest.approx(50.0, abs=1e-12)
    assert thr == pytest.approx(3.5, abs=1e-12)


def test_eer_perfect_separation():
    eer, thr = tt.compute_eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert eer == 0.0
    assert thr == 0.8
    eer, _ = tt.compute_eer([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1])
    assert eer == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("p_target", "c_miss", "c_fa", "expected", "threshold"),
    [
        # c_det = 0.25 fnr + 0.75 fpr: best 0.25 * 1/3 at 0.5; / min(0.25, 0.75)
        (0.25, 1.0, 1.0, 1 / 3, 0.5),
        # c_det = 0.9 fnr + 0.1 fpr: best 0.1 * 1/3 at 0.3; / 0.1
        (0.9, 1.0, 1.0, 1 / 3, 0.3),
        # c_det = 0.5 fnr + 1.5 fpr: best 0.5 * 1/3 at 0.5; / min(0.5, 1.5)
        (0.5, 1.0, 3.0, 1 / 3, 0.5),
        # c_det = 0.01 fnr + 0.99 fpr: 0.01 * 1/3 at 0.5 beats rejecting all (0.01); / 0.01
        (0.01, 1.0, 1.0, 1 / 3, 0.5),
    ],
)
def test_min_dcf_hand_case(p_target, c_miss, c_fa, expected, threshold):
    dcf, thr = tt.compute_min_dcf(S6, L6, p_target, c_miss, c_fa)
    assert dcf == pytest.approx(expected, abs=1e-12)
    assert thr == threshold


def test_min_dcf_reject_all_is_one():
    # every threshold that accepts a non-target costs more than rejecting everything when p_target is tiny
    dcf, thr = tt.compute_min_dcf([0.9, 0.1, 0.2], [0, 1, 1], p_target=0.001)
    assert dcf == pytest.approx(1.0)
    assert thr == np.inf


def test_det_curve_trims_saturated_points():
    fpr, fnr = tt.det_curve(S6, L6)
    # full curve fnr [0,0,0,1/3,1/3,2/3,1]: keep from the last fnr=0 (index 2) to the first fpr=0 (index 4)
    np.testing.assert_allclose(fpr, [1 / 3, 1 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(fnr, [0, 1 / 3, 1 / 3], atol=1e-15)


def test_compute_metrics_hand_case():
    m = tt.compute_metrics(S6, L6, p_targets=(0.25, 0.9), c_miss=1, c_fa=1)
    assert set(m) == {
        "eer_percent",
        "eer_threshold",
        "eer_vt_percent",
        "min_dcf_p0.25",
        "min_dcf_p0.25_threshold",
        "min_dcf_p0.9",
        "min_dcf_p0.9_threshold",
        "dcf_c_miss",
        "dcf_c_fa",
        "n_trials",
        "n_target",
        "n_nontarget",
    }
    assert m["eer_percent"] == pytest.approx(100 / 3)
    assert m["eer_threshold"] == 0.4
    assert m["min_dcf_p0.25"] == pytest.approx(1 / 3)
    assert m["min_dcf_p0.25_threshold"] == 0.5
    assert m["min_dcf_p0.9_threshold"] == 0.3
    assert (m["n_trials"], m["n_target"], m["n_nontarget"]) == (6, 3, 3)
    assert (m["dcf_c_miss"], m["dcf_c_fa"]) == (1.0, 1.0)
    assert "min_dcf_p0.01" in tt.compute_metrics(S6, L6) and "min_dcf_p0.05" in tt.compute_metrics(S6, L6)


# ---- agreement with independent references ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "seed", "decimals"), CASES)
def test_error_curve_matches_sklearn_full_roc(n, seed, decimals):
    scores, labels = random_trials(n, seed, decimals)
    fnr, fpr, thr = tt.error_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    # sklearn: decreasing thresholds, +inf (reject all) first; ours: increasing, +inf last
    np.testing.assert_array_equal(thr[::-1], sk_thr)
    np.testing.assert_allclose(fpr[::-1], sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fnr[::-1], 1 - sk_tpr, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "seed", "decimals"), CASES)
def test_min_dcf_and_eer_against_brute_force(n, seed, decimals):
    scores, labels = random_trials(n, seed, decimals)
    candidates = np.append(np.unique(scores), np.inf)
    fnr = np.array([np.mean(scores[labels == 1] < t) for t in candidates])
    fpr = np.array([np.mean(scores[labels == 0] >= t) for t in candidates])
    for p, cm, cf in [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.3, 2.0, 0.5)]:
        cost = cm * p * fnr + cf * (1 - p) * fpr
        dcf, thr = tt.compute_min_dcf(scores, labels, p, cm, cf)
        assert dcf == pytest.approx(cost.min() / min(cm * p, cf * (1 - p)), rel=1e-12)
        assert thr == candidates[np.argmin(cost)]
    # interpolated EER: walk the curve to the first sign change of fnr - fpr
    for k in range(1, len(candidates)):
        d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
        if d1 >= 0:
            a = -d0 / (d1 - d0)
            expected = fnr[k - 1] + a * (fnr[k] - fnr[k - 1])
            break
    eer, _ = tt.compute_eer(scores, labels)
    assert eer == pytest.approx(100 * expected, abs=1e-10)


@pytest.mark.parametrize(("n", "seed", "decimals"), CASES)
def test_tuneThresholdfromScore_matches_voxceleb_trainer(n, seed, decimals):
    scores, labels = random_trials(n, seed, decimals)
    target_fa, target_fr = [1, 0.1, 0.01, 0.0], [0.05, 0.5]
    for args in [(target_fa,), (target_fa, target_fr)]:
        tuned, eer, fpr, fnr = tt.tuneThresholdfromScore(scores, labels, *args)
        r_tuned, r_eer, r_fpr, r_fnr = ref_tuneThresholdfromScore(scores, labels, *args)
        np.testing.assert_array_equal(fpr, r_fpr)  # bit for bit
        np.testing.assert_array_equal(fnr, r_fnr)
        assert eer == r_eer
        np.testing.assert_array_equal(np.array(tuned), np.array(r_tuned))
        assert len(tuned) == len(args[0]) + (len(args[1]) if len(args) > 1 else 0)
        assert tt.compute_metrics(scores, labels)["eer_vt_percent"] == r_eer


@pytest.mark.parametrize(("n", "seed", "decimals"), CASES)
def test_ComputeErrorRates_and_ComputeMinDcf_match_voxceleb_trainer(n, seed, decimals):
    scores, labels = random_trials(n, seed, decimals)
    scores_list, labels_list = scores.tolist(), labels.tolist()
    fnrs, fprs, thresholds = tt.ComputeErrorRates(scores_list, labels_list)
    r_fnrs, r_fprs, r_thresholds = ref_ComputeErrorRates(scores_list, labels_list)
    assert fnrs == r_fnrs  # exact, and tie order (stable sort) matters here
    assert fprs == r_fprs
    assert list(thresholds) == list(r_thresholds)
    for p, cm, cf in [(0.01, 1, 1), (0.05, 1, 1), (0.2, 3.0, 0.7)]:
        assert tt.ComputeMinDcf(fnrs, fprs, thresholds, p, cm, cf) == ref_ComputeMinDcf(
            r_fnrs, r_fprs, r_thresholds, p, cm, cf
        )
    if decimals is None:  # without ties the per-trial curve has the same minimum as ours
        assert tt.compute_min_dcf(scores, labels, 0.05)[0] == pytest.approx(
            ref_ComputeMinDcf(r_fnrs, r_fprs, r_thresholds, 0.05, 1, 1)[0], rel=1e-12
        )


def test_float32_and_bool_inputs():
    scores, labels = random_trials(500, 7, 2)
    expected = tt.compute_metrics(scores.astype(np.float32).astype(np.float64), labels)
    assert tt.compute_metrics(scores.astype(np.float32), labels.astype(bool)) == expected
    assert tt.compute_metrics(list(scores), labels.astype(np.float64).tolist()) == tt.compute_metrics(scores, labels)


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2, 0.3], [0, 1, 2], r"labels\[2\] = np.int64\(2\)|labels\[2\] = 2"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length: 3 scores, 2 labels"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "no non-target"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "no target"),
        ([0.1, np.nan, 0.3], [0, 1, 0], "finite"),
        ([], [], "empty"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
        ([0.1, 0.2], ["a", "b"], "labels must be 0"),
    ],
)
def test_bad_input_raises(scores, labels, match):
    for fn in (tt.error_curve, tt.compute_eer, tt.compute_metrics, tt.det_curve, tt.ComputeErrorRates):
        with pytest.raises(ValueError, match=match):
            fn(scores, labels)
    with pytest.raises(ValueError, match=match):
        tt.tuneThresholdfromScore(scores, labels, [0.01])


def test_bad_dcf_parameters_raise():
    with pytest.raises(ValueError, match="p_target"):
        tt.compute_min_dcf(S6, L6, p_target=1.0)
    with pytest.raises(ValueError, match="c_miss"):
        tt.compute_metrics(S6, L6, c_miss=0.0)
    with pytest.raises(ValueError, match="one length"):
        tt.ComputeMinDcf([0.1], [0.2, 0.3], [1.0], 0.05, 1, 1)
