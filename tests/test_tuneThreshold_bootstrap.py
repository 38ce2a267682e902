"""The speaker-resampling bootstrap of tuneThreshold: resampled metrics equal those of the resampled trial list, hand
cases, determinism, clusters from names, and the coverage of its intervals on simulated lists with speaker effects."""

import numpy as np
import pytest
from scipy.stats import norm

import tuneThreshold as tt


def weighted_metrics(scores, labels, weights, p_targets):
    """The reference: the resampled trial list written out (each trial repeated by its weight), then the metrics."""
    m = tt.compute_metrics(np.repeat(scores, weights), np.repeat(labels, weights), p_targets, 1.0, 2.0)
    return [m["eer_percent"] / 100, *(m[f"min_dcf_p{float(p)}"] for p in p_targets)]


@pytest.mark.parametrize("seed", range(6))
def test_resampled_metrics_equal_those_of_the_resampled_list(seed):
    rng = np.random.default_rng(seed)
    n, n_spk = int(rng.integers(30, 300)), int(rng.integers(3, 12))
    labels = (rng.random(n) < 0.4).astype(np.int64)
    enroll = rng.integers(0, n_spk, n)
    test = np.where(labels == 1, enroll, (enroll + rng.integers(1, n_spk, n)) % n_spk)
    scores = np.round(rng.normal(size=n) + labels, seed % 3)  # 0 and 1 decimals: many ties of both classes
    plan = tt._resampler(scores, labels, enroll, test)
    counts = tt._draw_counts(rng, plan.n_clusters, 8)
    counts[:-1, 0] = 1  # the list itself
    p_targets = (0.01, 0.05, 0.3)
    got = tt._resampled_metrics(plan, counts, p_targets, 1.0, 2.0)
    ids = np.unique(np.concatenate((enroll, test)), return_inverse=True)[1]
    e, t = ids[:n], ids[n:]
    for r in range(counts.shape[1]):
        c = counts[:-1, r].astype(np.int64)
        weights = np.where(e == t, c[e], c[e] * c[t])  # a target once per draw of its speaker, a non-target per pair
        if labels[weights > 0].min() == labels[weights > 0].max():
            assert np.isnan(got[:, r]).all()
        else:
            np.testing.assert_allclose(got[:, r], weighted_metrics(scores, labels, weights, p_targets), rtol=1e-10,
                                       atol=1e-12)


def test_hand_case_speaker_weights():
    # speakers a, b, c; targets a 0.4, b 0.8, c 0.1; non-targets (a, b) 0.5, (a, c) 0.3, (b, c) 0.2.
    # Draw a twice, b once, c never: targets 0.4 (x2), 0.8 (x1); non-target 0.5 (x2 = 2 * 1); the others x0.
    # Thresholds 0.4, 0.5, 0.8, inf: FNR 0, 2/3, 2/3, 1; FPR 1, 1, 0, 0. FNR - FPR crosses 0 on the segment
    # from (2/3, 1) to (2/3, 0): EER 2/3. minDCF p = 0.5: min(0.5, 0.833, 0.333, 0.5) / 0.5 = 2/3.
    scores = np.array([0.4, 0.8, 0.1, 0.5, 0.3, 0.2])
    labels = np.array([1, 1, 1, 0, 0, 0])
    enroll, test = np.array([0, 1, 2, 0, 0, 1]), np.array([0, 1, 2, 1, 2, 2])
    plan = tt._resampler(scores, labels, enroll, test)
    counts = np.array([[2.0, 1.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)  # 2nd: the list itself
    got = tt._resampled_metrics(plan, counts, (0.5,), 1.0, 1.0)
    np.testing.assert_allclose(got[:, 0], [2 / 3, 2 / 3])
    whole = tt.compute_metrics(scores, labels, (0.5,))
    np.testing.assert_allclose(got[:, 1], [whole["eer_percent"] / 100, whole["min_dcf_p0.5"]])


def test_two_speakers_either_keep_the_list_or_lose_its_non_targets():
    # Drawing 2 of 2 speakers: both once (p 1/2) gives the list itself; one twice leaves no non-target (NaN).
    scores = np.array([0.9, 0.7, 0.8, 0.2, 0.75, 0.3])
    labels = np.array([1, 1, 1, 1, 0, 0])
    enroll, test = np.array([0, 0, 1, 1, 0, 1]), np.array([0, 0, 1, 1, 1, 0])
    reps = tt.bootstrap_replicates(scores, labels, enroll, test, (0.05,), n_resamples=1000, seed=3)
    whole = tt.compute_metrics(scores, labels, (0.05,))
    kept = np.isfinite(reps["eer_percent"])
    assert 0.44 < kept.mean() < 0.56
    np.testing.assert_allclose(reps["eer_percent"][kept], whole["eer_percent"])
    np.testing.assert_allclose(reps["min_dcf_p0.05"][kept], whole["min_dcf_p0.05"])
    assert np.isnan(reps["min_dcf_p0.05"][~kept]).all()


def test_separated_speakers_give_a_zero_interval():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 200)
    spk = rng.integers(0, 20, 400)
    scores = np.where(labels == 1, 2.0, -2.0) + rng.random(400)
    ci = tt.bootstrap_intervals(scores, labels, spk, np.where(labels == 1, spk, (spk + 1) % 20), (0.01,),
                                n_resamples=200)
    assert ci == {"eer_percent": (0.0, 0.0), "min_dcf_p0.01": (0.0, 0.0)}


def test_same_seed_same_interval_and_resamples_do_not_depend_on_their_number():
    s, y, e, t = simulated_list(np.random.default_rng(5), 30, 10, 0.5, 0.35)
    first = tt.bootstrap_intervals(s, y, e, t, n_resamples=300, seed=7)
    assert tt.bootstrap_intervals(s, y, e, t, n_resamples=300, seed=7) == first
    assert tt.bootstrap_intervals(s, y, e, t, n_resamples=300, seed=8) != first
    many = tt.bootstrap_replicates(s, y, e, t, n_resamples=200, seed=7)
    few = tt.bootstrap_replicates(s, y, e, t, n_resamples=70, seed=7)
    for key in many:
        np.testing.assert_array_equal(few[key], many[key][:70])


def test_speaker_clusters_from_names():
    enroll = ["id10270/x6uYqmx31kE/00001.wav", "id10270/x6uYqmx31kE/00001.wav", "id10300/a/00003.wav"]
    test = ["id10270/8jEAjG6SegY/00008.wav", "id10300/ize_eiCFEg0/00003.wav", "id10309/b/00001.wav"]
    e, t, unit = tt.trial_clusters(enroll, test, [1, 0, 0])
    assert unit == "speaker" and e.tolist() == [0, 0, 1] and t.tolist() == [0, 1, 2]
    assert tt.trial_clusters(enroll, test)[2] == "speaker"  # unlabelled: the folders alone decide
    e, t, unit = tt.trial_clusters(["a.wav", "a.wav", "b.wav"], ["b.wav", "c.wav", "c.wav"], [0, 0, 1])
    assert unit == "file" and e.tolist() == [0, 0, 1] and t.tolist() == [1, 2, 2]
    # one folder above the speakers: every trial shares it, so it cannot be the speaker
    wav = ["wav/" + name for name in enroll], ["wav/" + name for name in test]
    assert tt.trial_clusters(*wav, [1, 0, 0])[2] == "file"
    with pytest.raises(ValueError, match="differ in length"):
        tt.trial_clusters(enroll, test[:2])


def test_bad_arguments_are_refused():
    s, y = np.array([0.1, 0.9, 0.4]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        tt.bootstrap_replicates(s, y, [0, 1, 1], [2, 1, 1], n_resamples=0)
    with pytest.raises(ValueError, match=r"must be \(3,\)"):
        tt.bootstrap_replicates(s, y, [0, 1], [2, 1], n_resamples=10)
    with pytest.raises(ValueError, match="p_target must be in"):
        tt.bootstrap_replicates(s, y, [0, 1, 1], [2, 1, 1], p_targets=(1.5,), n_resamples=10)


def test_difference_test_on_identical_and_clearly_different_systems():
    assert tt.difference_test(0.0, np.zeros(500)) == {"ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0,
                                                      "resamples": 500}
    rng = np.random.default_rng(0)
    better = tt.difference_test(-1.0, -1.0 + 0.1 * rng.normal(size=999))
    assert better["ci_high"] < 0 and better["p_value"] == pytest.approx(2 / 1000)
    unclear = tt.difference_test(0.05, 0.05 + 0.1 * rng.normal(size=999))
    assert unclear["ci_low"] < 0 < unclear["ci_high"] and unclear["p_value"] > 0.3


# ---- coverage on simulated lists ---------------------------------------------------------------------------------

MU_T, SD_SPK_T, SD_SPK_N = 3.0, 0.5, 0.35  # target mean; speaker effects on target and non-target scores
TARGETS_PER_SPEAKER = 20


def simulated_list(rng, n_spk, per_spk, sd_t, sd_n):
    """Target scores MU_T + u_spk + e, non-target scores v_enroll + v_test + e (e ~ N(0, 1)): a speaker's trials
    share its effects. Every speaker has ``per_spk`` targets; as many non-targets, between random pairs."""
    u, v = rng.normal(0.0, sd_t, n_spk), rng.normal(0.0, sd_n, n_spk)
    spk = np.repeat(np.arange(n_spk), per_spk)
    e = rng.integers(0, n_spk, spk.size)
    t = (e + rng.integers(1, n_spk, spk.size)) % n_spk
    scores = np.concatenate((MU_T + u[spk], v[e] + v[t])) + rng.normal(size=2 * spk.size)
    labels = np.repeat([1, 0], spk.size)
    return scores, labels, np.concatenate((spk, e)), np.concatenate((spk, t))


def true_eer(mu_t, sd_t, sd_n):
    """Of the population: targets N(mu_t, sd_t^2), non-targets N(0, sd_n^2); FNR = FPR at x = mu_t sd_n / (sd_t +
    sd_n)."""
    return 100.0 * norm.cdf(-mu_t / (sd_t + sd_n))


def test_intervals_cover_the_true_eer_and_difference_on_simulated_lists():
    """200 lists of 30 speakers: the speaker bootstrap's 95% intervals of the EER and of a paired difference cover
    the population's values about 95% of the time; resampling trials ignores the speaker effects and undercovers."""
    rng = np.random.default_rng(2026)
    sd_t, sd_n = np.hypot(1.0, SD_SPK_T), np.hypot(1.0, np.sqrt(2.0) * SD_SPK_N)
    shift, noise = 0.3, 0.5  # system B: targets 0.3 higher, and noise of its own
    eer_a = true_eer(MU_T, sd_t, sd_n)
    diff = true_eer(MU_T + shift, np.hypot(sd_t, noise), np.hypot(sd_n, noise)) - eer_a
    n_lists, covered, covered_diff, covered_trials = 200, 0, 0, 0
    for i in range(n_lists):
        s, y, e, t = simulated_list(rng, 30, TARGETS_PER_SPEAKER, SD_SPK_T, SD_SPK_N)
        s_b = s + shift * y + rng.normal(0.0, noise, s.size)
        point = tt.compute_eer(s, y)[0]
        reps = tt.bootstrap_replicates(s, y, e, t, (0.05,), n_resamples=128, seed=i)["eer_percent"]
        lo, hi = tt.basic_interval(point, reps)
        covered += lo <= eer_a <= hi
        reps_b = tt.bootstrap_replicates(s_b, y, e, t, (0.05,), n_resamples=128, seed=i)["eer_percent"]
        test = tt.difference_test(tt.compute_eer(s_b, y)[0] - point, reps_b - reps)
        covered_diff += test["ci_low"] <= diff <= test["ci_high"]
        trials = np.arange(s.size)
        lo, hi = tt.basic_interval(point, tt.bootstrap_replicates(s, y, trials, trials, (0.05,), n_resamples=128,
                                                                  seed=i)["eer_percent"])
        covered_trials += lo <= eer_a <= hi
    coverage, coverage_diff, coverage_trials = covered / n_lists, covered_diff / n_lists, covered_trials / n_lists
    print(f"coverage of the 95% intervals over {n_lists} lists: EER {coverage:.3f}, paired difference "
          f"{coverage_diff:.3f}, resampling trials {coverage_trials:.3f}")
    assert 0.88 <= coverage <= 0.99
    assert 0.88 <= coverage_diff <= 0.99
    assert coverage_trials < 0.85
