"""The result folder on hand-made embeddings: a folder per trial list, the variants of a list kept together while
they come from the same embeddings and removed when they do not, the calibration list's role, the older layout."""

import itertools
import json

import numpy as np
import pytest

import config
from dtdysv.data.lists import TrialList
from dtdysv.evaluation import pipeline as ev
from dtdysv.evaluation import plot
from dtdysv.evaluation.metrics import rerun_metrics
from dtdysv.evaluation.results import ROLE_CALIBRATION, ROLE_TEST, EvalError, EvalRun, list_results, save_npz

D, SPEAKERS, PER_SPEAKER = 6, 4, 4
NAMES = [f"s{i // PER_SPEAKER}/u{i % PER_SPEAKER}.wav" for i in range(SPEAKERS * PER_SPEAKER)]


def write_embeddings(out, seed: int, weights: str) -> None:
    """embeddings.npz of 16 files (4 speakers, 2 crops each) as the weights ``weights`` would give them."""
    rng = np.random.default_rng(seed)
    crops = rng.standard_normal((SPEAKERS, D)).repeat(PER_SPEAKER, 0)[:, None, :] + rng.standard_normal((16, 2, D))
    meta = {"protocol": "paper", "eval_frames": 60, "num_eval": 2, "test_normalize": True, "weights": weights,
            "checkpoint": f"{weights}.model"}
    save_npz(out / "embeddings.npz", meta, names=np.array(NAMES), embeddings=crops.astype(np.float32),
             seconds=rng.uniform(1.0, 8.0, len(NAMES)))


@pytest.fixture()
def out(tmp_path):
    """A result folder with the embeddings of the weights 'w1' and a cohort of 5 speakers."""
    write_embeddings(tmp_path, 0, "w1")
    rng = np.random.default_rng(1)
    file_means, raw_means, centred_means = rng.standard_normal((3, 10, D)).astype(np.float32)
    save_npz(tmp_path / "cohort.npz", {"norm_cohort_utts": 2}, names=np.array([f"c{i}" for i in range(5)]),
             embeddings=np.zeros((5, D), np.float32), file_means=file_means, raw_means=raw_means,
             centred_means=centred_means, owner=np.arange(10) // 2)
    return tmp_path


def trial_lists() -> tuple[TrialList, TrialList, TrialList]:
    """(every pair, its first half, its second half) as the lists all.txt, a.txt, b.txt."""
    pairs = list(itertools.combinations(range(len(NAMES)), 2))
    labels = np.array([int(a // PER_SPEAKER == b // PER_SPEAKER) for a, b in pairs])
    whole = TrialList("all.txt", labels, [NAMES[a] for a, _ in pairs], [NAMES[b] for _, b in pairs])

    def part(k: int, path: str) -> TrialList:
        return TrialList(path, whole.labels[k::2], whole.enroll[k::2], whole.test[k::2])

    return whole, part(0, "a.txt"), part(1, "b.txt")


def report(out, lists, calibration=None, checkpoint=None, **options) -> dict:
    cfg = config.Config(**{"norm_top_n": 3, "bootstrap": 0, **options})
    return ev.score_and_report(EvalRun(cfg, out, checkpoint=checkpoint), list_results(lists, calibration))


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_each_list_has_its_folder_and_another_list_never_touches_it(out):
    whole, a, b = trial_lists()
    first = report(out, [a], score_norm="asnorm")
    assert list(first) == ["a"] and first["a"]["role"] == ROLE_TEST and first["a"]["weights"] == "w1"
    before = files(out / "a")
    assert set(before) == {"scores.txt", "scores.asnorm.txt", "metrics.json", "det.png"}
    report(out, [b])
    report(out, [whole, b], score_norm="snorm")
    assert files(out / "a") == before
    assert sorted(p.name for p in out.iterdir()) == ["a", "all", "b", "cohort.npz", "embeddings.npz"]
    assert list(json.loads((out / "b" / "metrics.json").read_text())["variants"]) == ["raw", "snorm"]


def test_a_later_variant_joins_the_earlier_ones_of_the_same_embeddings(out, monkeypatch):
    _, a, _ = trial_lists()
    drawn = []
    monkeypatch.setattr(plot, "plot_det", lambda curves, path, p_targets, title: drawn.append(
        (title, [label for label, *_ in curves], sorted(p_targets))))
    raw = report(out, [a])["a"]["variants"]["raw"]
    scores = (out / "a" / "scores.txt").read_bytes()
    normed = report(out, [a], score_norm="asnorm", dcf_p_target=0.1)["a"]["variants"]
    assert list(normed) == ["raw", "asnorm"] and normed["raw"]["eer_percent"] == raw["eer_percent"]
    both = report(out, [a], score_norm="snorm")["a"]["variants"]
    assert list(both) == ["raw", "asnorm", "snorm"] and both["asnorm"] == normed["asnorm"]
    assert (out / "a" / "scores.txt").read_bytes() == scores and (out / "a" / "scores.asnorm.txt").is_file()
    assert json.loads((out / "a" / "metrics.json").read_text())["variants"] == both
    # the DET figure shows every variant present, at the p_targets that all of them report
    assert drawn == [("DET curve: a", ["raw"], [0.01, 0.05]), ("DET curve: a", ["raw", "asnorm"], [0.01, 0.05, 0.1]),
                     ("DET curve: a", ["raw", "asnorm", "snorm"], [0.01, 0.05])]


def test_an_evaluation_of_other_weights_removes_the_earlier_variants(out, caplog):
    whole, a, _ = trial_lists()
    report(out, [a, whole], calibration=whole, score_norm="asnorm", calibration_list="all.txt", checkpoint="w1.model")
    assert set(files(out / "a")) == {"scores.txt", "scores.asnorm.txt", "scores.cal.txt", "metrics.json", "det.png"}
    untouched = files(out / "all")
    write_embeddings(out, 5, "w2")  # a second checkpoint's embeddings
    with caplog.at_level("INFO"):
        again = report(out, [a], checkpoint="w2.model")["a"]
    assert list(again["variants"]) == ["raw"] and again["weights"] == "w2" and again["checkpoint"] == "w2.model"
    assert set(files(out / "a")) == {"scores.txt", "metrics.json", "det.png"}
    assert (f"{out / 'a'}: removed the earlier asnorm, cal scores and figures, which were of other weights "
            f"(checkpoint 'w1.model')") in caplog.text
    assert files(out / "all") == untouched and files(out / "all_2")  # other lists keep what they had
    # other trials under the same name are no earlier variant of them either
    report(out, [a], score_norm="asnorm")
    caplog.clear()
    with caplog.at_level("INFO"):
        shorter = report(out, [TrialList("a.txt", a.labels[:-4], a.enroll[:-4], a.test[:-4])])["a"]
    assert list(shorter["variants"]) == ["raw"] and "which were of other trials" in caplog.text


def test_the_calibration_list_is_labelled_as_training_figures(out, caplog):
    whole, a, b = trial_lists()
    with caplog.at_level("INFO"):
        metrics = report(out, [b], calibration=a, calibration_list="a.txt")
    assert (metrics["b"]["role"], metrics["a"]["role"]) == (ROLE_TEST, ROLE_CALIBRATION)
    assert ROLE_CALIBRATION == "calibration (training figures, not held out)"
    assert json.loads((out / "a" / "metrics.json").read_text())["role"] == ROLE_CALIBRATION
    assert f"a ({ROLE_CALIBRATION}), cal: EER" in caplog.text and "b, cal: EER" in caplog.text
    # the same list evaluated later as a test list: its calibrated training figures are not kept under that role
    caplog.clear()
    with caplog.at_level("INFO"):
        held = report(out, [a])["a"]
    assert held["role"] == ROLE_TEST and list(held["variants"]) == ["raw"] and "which were of another role" in \
        caplog.text
    assert not (out / "a" / "scores.cal.txt").exists()


def test_a_result_folder_of_the_older_flat_layout(out, caplog):
    (out / "scores.txt").write_text("0.5 1 s0/u0.wav s0/u1.wav\n")
    (out / "metrics.json").write_text(json.dumps({"test_list": "a.txt", "eer_percent": 0.0, "checkpoint": ""}))
    with pytest.raises(EvalError, match="was written by an older version .* Rerun trainSpeakerNet.py --eval"):
        rerun_metrics(EvalRun(config.Config(), out))
    _, a, _ = trial_lists()
    with caplog.at_level("WARNING"):
        report(out, [a])
    assert "also holds results of an older version's flat layout (metrics.json, scores.txt)" in caplog.text
    assert (out / "scores.txt").read_text() == "0.5 1 s0/u0.wav s0/u1.wav\n" and (out / "a" / "metrics.json").is_file()
    assert list(rerun_metrics(EvalRun(config.Config(), out))) == ["a"]
