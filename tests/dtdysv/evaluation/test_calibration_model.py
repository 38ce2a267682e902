"""calibration.py: Cllr and actual DCF on hand-computed cases, logistic-regression calibration against the
analytic log-likelihood ratio, quality features that help."""

import math

import numpy as np
import pytest

from dtdysv.evaluation.calibrate import Calibration, fit_calibration
from tuneThreshold import actual_dcf, bayes_threshold, cllr


def gaussian_trials(n: int, mu_t: float, mu_n: float, sigma: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mu_t, sigma, n), rng.normal(mu_n, sigma, 4 * n)])
    labels = np.concatenate([np.ones(n, int), np.zeros(4 * n, int)])
    return scores, labels


def test_cllr_of_uninformative_and_of_hand_computed_llrs():
    labels = np.array([1, 0, 1, 0])
    assert cllr(np.zeros(4), labels) == pytest.approx(1.0)
    llrs = np.array([2.0, -1.0, 0.5, 3.0])
    target = (math.log2(1 + math.exp(-2.0)) + math.log2(1 + math.exp(-0.5))) / 2
    non_target = (math.log2(1 + math.exp(-1.0)) + math.log2(1 + math.exp(3.0))) / 2
    assert cllr(llrs, labels) == pytest.approx((target + non_target) / 2)
    assert cllr(np.array([1e4, -1e4]), np.array([1, 0])) == pytest.approx(0.0, abs=1e-12)  # no overflow


def test_actual_dcf_decides_at_the_bayes_threshold():
    assert bayes_threshold(0.5) == 0.0
    assert bayes_threshold(0.01) == pytest.approx(math.log(99))
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    llrs = np.array([5.0, 5.0, 1.0, -1.0, -5.0, -5.0, -5.0, 4.0])
    # p 0.5: threshold 0; 1 miss of 4, 1 false alarm of 4 -> (0.5 * 0.25 + 0.5 * 0.25) / 0.5
    assert actual_dcf(llrs, labels, 0.5) == pytest.approx(0.5)
    # p 0.05: threshold log 19 = 2.94; misses 2/4, false alarms 1/4 -> (0.05 * 0.5 + 0.95 * 0.25) / 0.05
    assert actual_dcf(llrs, labels, 0.05) == pytest.approx((0.05 * 0.5 + 0.95 * 0.25) / 0.05)


def test_calibration_recovers_the_analytic_llr():
    mu_t, mu_n, sigma = 0.7, 0.2, 0.2
    scores, labels = gaussian_trials(20_000, mu_t, mu_n, sigma)
    model = fit_calibration(scores, labels, ("score",))
    slope = (mu_t - mu_n) / sigma**2  # the two Gaussians' llr: slope * s + intercept
    intercept = -(mu_t**2 - mu_n**2) / (2 * sigma**2)
    assert model.weights[0] == pytest.approx(slope, rel=0.03)
    assert model.bias == pytest.approx(intercept, rel=0.03)
    truth = slope * scores + intercept
    assert cllr(model.apply(scores), labels) == pytest.approx(cllr(truth, labels), abs=2e-3)


def test_calibration_lowers_cllr_of_raw_scores_on_held_out_trials():
    train = gaussian_trials(2_000, 0.7, 0.2, 0.1, seed=1)
    test = gaussian_trials(2_000, 0.7, 0.2, 0.1, seed=2)
    raw = cllr(*test)  # cosine-like scores read as llrs: badly calibrated
    model = fit_calibration(*train)
    calibrated = model.apply(test[0])
    assert cllr(calibrated, test[1]) < 0.5 * raw
    assert actual_dcf(calibrated, test[1], 0.05) < actual_dcf(test[0], test[1], 0.05)


def test_quality_features_correct_a_quality_dependent_shift():
    """Short test utterances lower every score: a duration feature lets the calibration undo it."""
    rng = np.random.default_rng(3)
    scores, labels = gaussian_trials(4_000, 0.7, 0.2, 0.08, seed=4)
    log_duration = rng.uniform(0.0, 2.0, scores.shape[0])
    shifted = scores - 0.3 * (2.0 - log_duration)
    features = np.stack([shifted, log_duration], axis=1)
    half = scores.shape[0] // 2
    order = rng.permutation(scores.shape[0])
    fit, held = order[:half], order[half:]
    score_only = fit_calibration(shifted[fit], labels[fit])
    quality = fit_calibration(features[fit], labels[fit], ("score", "log_duration"))
    assert cllr(quality.apply(features[held]), labels[held]) < 0.7 * cllr(score_only.apply(shifted[held]),
                                                                          labels[held])


def test_calibration_round_trips_and_refuses_bad_input():
    model = fit_calibration(*gaussian_trials(500, 0.7, 0.2, 0.1), ("score",))
    again = Calibration.from_dict(model.to_dict())
    assert np.allclose(again.apply([0.1, 0.5]), model.apply([0.1, 0.5]))
    with pytest.raises(ValueError, match="needs weights"):
        Calibration.from_dict({"weights": [1.0]})
    with pytest.raises(ValueError, match="both target"):
        fit_calibration([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match=r"features must be \(trials, 1\)"):
        model.apply(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        fit_calibration([0.1, np.nan], [1, 0])
