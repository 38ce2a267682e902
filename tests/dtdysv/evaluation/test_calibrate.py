"""--mean_subtraction and the calibration stage on hand-made embeddings and cohort files: the scores the formulas
give, the calibration model file and its reuse, and the errors a user can cause."""

import itertools
import json

import numpy as np
import pytest

import config
from dtdysv.data.lists import TrialList
from dtdysv.evaluation import calibrate
from dtdysv.evaluation import pipeline as ev
from dtdysv.evaluation.normalise import file_statistics, norm_stage
from dtdysv.evaluation.results import ROLE_CALIBRATION, EvalError, EvalRun, list_results, read_scores, save_npz
from dtdysv.evaluation.score import score_stage

D, SPEAKERS, PER_SPEAKER = 6, 4, 4


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture()
def folder(tmp_path):
    """embeddings.npz of 16 files (4 speakers, 2 crops each, a common offset) and cohort.npz of 5 speakers x 2."""
    rng = np.random.default_rng(0)
    offset = 3.0 * rng.standard_normal(D)
    centres = rng.standard_normal((SPEAKERS, D))
    crops = offset + centres.repeat(PER_SPEAKER, 0)[:, None, :] + 0.8 * rng.standard_normal((16, 2, D))
    names = [f"s{i // PER_SPEAKER}/u{i % PER_SPEAKER}.wav" for i in range(16)]
    seconds = rng.uniform(1.0, 8.0, 16)
    meta = {"protocol": "paper", "eval_frames": 60, "num_eval": 2, "test_normalize": True}
    save_npz(tmp_path / "embeddings.npz", meta, names=np.array(names), embeddings=crops.astype(np.float32),
             seconds=seconds)
    cohort_crops = offset + rng.standard_normal((10, 2, D))
    file_means = unit(cohort_crops).mean(1).astype(np.float32)  # crop means of L2-normalised crops
    raw_means = cohort_crops.mean(1).astype(np.float32)
    centred_means = unit(cohort_crops - raw_means.mean(0)).mean(1).astype(np.float32)
    owner = np.arange(10) // 2
    save_npz(tmp_path / "cohort.npz", {"norm_cohort_utts": 2}, names=np.array([f"c{i}" for i in range(5)]),
             embeddings=np.zeros((5, D), np.float32), file_means=file_means, raw_means=raw_means,
             centred_means=centred_means, owner=owner)
    pairs = list(itertools.combinations(range(16), 2))
    labels = np.array([int(a // PER_SPEAKER == b // PER_SPEAKER) for a, b in pairs])
    trials = TrialList("all.txt", labels, [names[a] for a, _ in pairs], [names[b] for _, b in pairs])
    return tmp_path, {"crops": crops, "names": names, "raw_means": raw_means, "owner": owner, "trials": trials,
                      "seconds": dict(zip(names, seconds, strict=True)), "cohort_crops": cohort_crops}


def halves(trials: TrialList) -> tuple[TrialList, TrialList]:
    def part(k: int, path: str) -> TrialList:
        return TrialList(path, trials.labels[k::2], trials.enroll[k::2], trials.test[k::2])

    return part(0, "calib.txt"), part(1, "heldout.txt")


def report(cfg: config.Config, lists, out, calibration=None) -> dict:
    return ev.score_and_report(EvalRun(cfg, out), list_results(lists, calibration))


def test_mean_subtraction_scores_as_the_formula_says(folder):
    out, data = folder
    run = EvalRun(make_cfg(), out)
    m = data["raw_means"].astype(np.float64).mean(0)  # the mean of the raw embeddings, as WeSpeaker's
    np.testing.assert_allclose(run.train_mean().numpy(), m, rtol=1e-6)
    trials = data["trials"]
    lists = list_results([trials])
    score_stage(run, lists)
    info = lists[0].raw.info
    assert info["mean_subtraction"] is True and "training-set mean" in info["protocol_detail"]
    # paper protocol: the mean subtracted from the raw crops, then L2-normalised; -mean distance of crop pairs
    crops = unit(data["crops"] - m)
    index = {n: i for i, n in enumerate(data["names"])}
    expected = [-np.linalg.norm(crops[index[e]][:, None] - crops[index[t]][None], axis=-1).mean()
                for e, t in zip(trials.enroll, trials.test, strict=True)]
    np.testing.assert_allclose(read_scores(out / "all" / "scores.txt").scores, expected, atol=2e-6)
    plain = list_results([trials])
    score_stage(EvalRun(make_cfg(mean_subtraction=False), out), plain)
    assert plain[0].raw.info["mean_subtraction"] is False
    assert np.abs(read_scores(out / "all" / "scores.txt").scores - np.array(expected)).max() > 0.05

    # AS-norm: test and cohort vectors unit(mean of unit(crop - m)); cohort speakers the mean of their files' vectors
    norm_stage(run, lists)
    vectors = unit(unit(data["crops"] - m).mean(1))
    cohort_files = unit(unit(data["cohort_crops"] - m).mean(1))
    cohort = np.stack([cohort_files[data["owner"] == s].mean(0) for s in range(5)])
    top = np.sort(vectors @ unit(cohort).T, axis=1)[:, -3:]
    mu, sd = top.mean(1), top.std(1)
    e, t = (np.array([index[f] for f in side]) for side in (trials.enroll, trials.test))
    s = (vectors[e] * vectors[t]).sum(1)
    expected_norm = 0.5 * ((s - mu[e]) / sd[e] + (s - mu[t]) / sd[t])
    np.testing.assert_allclose(read_scores(out / "all" / "scores.asnorm.txt").scores, expected_norm, atol=2e-5)


def make_cfg(**overrides) -> config.Config:
    return config.Config(**{"score_norm": "asnorm", "norm_top_n": 3, "mean_subtraction": True, **overrides})


def test_calibration_trains_on_one_list_and_applies_the_model_file_again(folder):
    out, data = folder
    calib, heldout = halves(data["trials"])
    metrics = report(make_cfg(calibration_list="calib.txt"), [heldout], out, calib)["heldout"]["variants"]
    model = json.loads((out / "calibration.json").read_text())
    assert model["features"] == ["score_asnorm", "log_seconds_min", "log_seconds_max",
                                 "cohort_top3_mean_min", "cohort_top3_mean_max"]
    assert model["settings"] == {"protocol": "paper", "score_norm": "asnorm", "norm_top_n": 3,
                                 "mean_subtraction": True}
    assert (model["trained_on"], model["n_target"], model["n_nontarget"]) == ("calib.txt", int(calib.labels.sum()),
                                                                            int((calib.labels == 0).sum()))
    # the llrs are the model's linear map of the features: the AS-norm score, the smaller and the larger log
    # duration and cohort mean of the two sides
    cal = read_scores(out / "heldout" / "scores.cal.txt")
    norm = read_scores(out / "heldout" / "scores.asnorm.txt")
    stats = file_statistics(EvalRun(make_cfg(), out))
    mean = stats.mean.numpy()
    log_seconds = [np.log([data["seconds"][f] for f in side]) for side in (norm.enroll, norm.test)]
    cohort = [mean[[stats.index[f] for f in side]] for side in (norm.enroll, norm.test)]
    features = np.stack([norm.scores, np.minimum(*log_seconds), np.maximum(*log_seconds), np.minimum(*cohort),
                         np.maximum(*cohort)], 1)
    np.testing.assert_allclose(cal.scores, features @ np.array(model["weights"]) + model["bias"], atol=2e-6)
    assert metrics["cal"]["cllr_bits"] < metrics["raw"]["cllr_bits"] and metrics["cal"]["cllr_bits"] < 1.0
    assert {"act_dcf_p0.01", "act_dcf_p0.05"} <= set(metrics["cal"])
    assert json.loads((out / "calib" / "metrics.json").read_text())["role"] == ROLE_CALIBRATION
    assert json.loads((out / "heldout" / "metrics.json").read_text())["role"] == "test (held out)"

    # applied from the model file alone (no list): the same calibrated scores; an evaluation without calibration of
    # the same embeddings keeps them
    first = (out / "heldout" / "scores.cal.txt").read_bytes()
    (out / "heldout" / "scores.cal.txt").unlink()
    report(make_cfg(calibration_model=str(out / "calibration.json")), [heldout], out)
    assert (out / "heldout" / "scores.cal.txt").read_bytes() == first
    again = report(make_cfg(), [heldout], out)["heldout"]["variants"]
    assert list(again) == ["raw", "asnorm", "cal"] and again["cal"]["cllr_bits"] == metrics["cal"]["cllr_bits"]
    assert (out / "heldout" / "scores.cal.txt").read_bytes() == first


@pytest.mark.parametrize("score_norm", ["asnorm", "none"])
def test_swapping_enrollment_and_test_leaves_the_llr_unchanged(folder, score_norm):
    out, data = folder
    calib, heldout = halves(data["trials"])
    swapped = TrialList("swapped.txt", heldout.labels, heldout.test, heldout.enroll)
    report(make_cfg(score_norm=score_norm, calibration_list="calib.txt"), [heldout, swapped], out, calib)
    llrs, llrs_swapped = (read_scores(out / name / "scores.cal.txt") for name in ("heldout", "swapped"))
    assert llrs_swapped.enroll == llrs.test and not np.allclose(np.log([data["seconds"][f] for f in llrs.enroll]),
                                                                 np.log([data["seconds"][f] for f in llrs.test]))
    np.testing.assert_allclose(llrs_swapped.scores, llrs.scores, atol=1e-4)  # scores are written to 6 decimals
    weights = json.loads((out / "calibration.json").read_text())["weights"]
    assert min(abs(w) for w in weights[1:3]) > 1e-3  # the durations take part in the llr


def test_a_model_of_other_features_or_settings_is_refused(folder):
    out, data = folder
    calib, heldout = halves(data["trials"])
    report(make_cfg(calibration_list="calib.txt"), [heldout], out, calib)
    model = str(out / "calibration.json")
    with pytest.raises(EvalError, match=r"calibration.json' was trained on other features or settings \(score_norm: "
                                        r"model 'asnorm', now 'none'.*features: model \['score_asnorm'"):
        report(make_cfg(score_norm="none", calibration_model=model), [heldout], out)
    with pytest.raises(EvalError, match="mean_subtraction: model True, now False"):
        report(make_cfg(mean_subtraction=False, calibration_model=model), [heldout], out)
    (out / "bad.json").write_text(json.dumps({"weights": [1.0], "bias": 0.0, "features": ["score"]}))
    with pytest.raises(EvalError, match="bad.json' is not a calibration model"):
        report(make_cfg(calibration_model=str(out / "bad.json")), [heldout], out)
    with pytest.raises(EvalError, match="absent.json' does not exist; give --calibration_list"):
        report(make_cfg(calibration_model=str(out / "absent.json")), [heldout], out)


def test_without_a_cohort_the_features_are_score_and_durations(folder, caplog):
    out, data = folder
    calib, heldout = halves(data["trials"])
    metrics = report(make_cfg(score_norm="none", mean_subtraction=False, calibration_list="c.txt"),
                     [heldout, data["trials"]], out, calib)
    assert "heldout.txt" not in caplog.text
    assert f"{len(calib.labels)} of the {len(data['trials'].labels)} trials of 'all.txt' are trials of" in caplog.text
    assert json.loads((out / "calibration.json").read_text())["features"] == ["score", "log_seconds_min",
                                                                              "log_seconds_max"]
    variants = metrics["heldout"]["variants"]
    assert variants["cal"]["score"] == "scores.txt" and variants["raw"]["mean_subtraction"] is False
    assert list(metrics) == ["heldout", "all", "calib"] and metrics["calib"]["role"] == ROLE_CALIBRATION


@pytest.mark.parametrize("lines, fragment", [
    (["a.wav b.wav"], "is unlabeled"),
    (["1 a.wav b.wav", "1 b.wav a.wav"], r"has only target \(1\) trials \(2\)"),
    (["0 a.wav b.wav"], r"has only non-target \(0\) trials \(1\)"),
    (["1 a.wav missing.wav", "0 a.wav b.wav"], "(?s)--calibration_list .*listed files do not exist.*missing.wav"),
])
def test_bad_calibration_lists_are_refused(tmp_path, lines, fragment):
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(EvalError, match=fragment):
        calibrate.read_calibration_list(tmp_path / "list.txt", tmp_path)


def test_score_from_cache_refuses_a_calibration_list_of_files_not_embedded(folder, tmp_path):
    out, _ = folder
    (tmp_path / "other.txt").write_text("1 x/1.wav x/2.wav\n0 x/1.wav y/1.wav\n")
    cfg = make_cfg(eval=True, score_from_cache=True, calibration_list=str(tmp_path / "other.txt"))
    with pytest.raises(EvalError, match="files of the trial lists are not in it, e.g. 'x/1.wav'"):
        ev.score_from_cache(cfg, [], out)


def test_an_absent_model_without_a_list_is_refused_before_embedding(tmp_path):
    with pytest.raises(EvalError, match="--calibration_model '.*absent.json' does not exist; give --calibration_list"):
        ev.check_eval_options(make_cfg(calibration_model=str(tmp_path / "absent.json")))
    ev.check_eval_options(make_cfg(calibration_model=str(tmp_path / "absent.json"), calibration_list="c.txt"))


def test_new_options_are_coerced():
    cfg = config.resolve({"mean_subtraction": "yes", "calibration_list": "data/calib.txt"},
                         {"calibration_model": "m.json"})
    assert (cfg.mean_subtraction, cfg.calibration_list, cfg.calibration_model) == (True, "data/calib.txt", "m.json")
    assert config.parse_args(["--mean_subtraction"]).mean_subtraction is True
    assert config.parse_args(["--no-mean_subtraction"]).mean_subtraction is False
    assert config.DEFAULTS.mean_subtraction is False and config.DEFAULTS.calibration_list == ""
    with pytest.raises(config.ConfigError, match="expects bool"):
        config.resolve({"mean_subtraction": "sometimes"})


def test_a_saved_calibration_applies_with_its_own_settings(folder, caplog):
    out, data = folder
    calib, heldout = halves(data["trials"])
    report(make_cfg(calibration_list="calib.txt"), [heldout], out, calib)
    first = (out / "heldout" / "scores.cal.txt").read_bytes()
    (out / "heldout" / "scores.cal.txt").unlink()
    # only the model file: --score_norm asnorm, --norm_top_n 3 and --mean_subtraction come from it
    bare = config.Config(calibration_model=str(out / "calibration.json"))
    with caplog.at_level("INFO"):
        ev.score_and_report(EvalRun(ev.adopt_settings(bare), out), list_results([heldout]))
    assert "--score_norm asnorm, --norm_top_n 3, --mean_subtraction True" in caplog.text
    assert (out / "heldout" / "scores.cal.txt").read_bytes() == first
    with pytest.raises(EvalError, match="score_norm: model 'asnorm', now 'snorm'"):  # a setting given otherwise
        report(ev.adopt_settings(config.Config(calibration_model=str(out / "calibration.json"), score_norm="snorm")),
               [heldout], out)
