"""--seeds: one command trains a config once per seed, each into its own resumable experiment folder, and writes the
table of their results (each run with its intervals, then mean and std)."""

import csv

import numpy as np
import pytest

import trainSpeakerNet
from conftest import tiny_argv as argv
from dtdysv.evaluation.results import RAW, list_folders, read_list_metrics


def raw_metrics(run):
    """The raw scores' figures of a run's one trial list."""
    (folder,) = list_folders(run / "result").values()
    return read_list_metrics(folder)["variants"][RAW]


@pytest.fixture(scope="module")
def two_seeds(corpus, tmp_path_factory):
    """seed 3 trained alone (as if a multi-seed run was killed after it), then the command for seeds 3 and 4."""
    save = tmp_path_factory.mktemp("seeds")
    assert trainSpeakerNet.main(argv(corpus, save, "--seeds", "3")) == 0
    first = (save / "seed3" / "model" / "last.model").stat().st_mtime_ns
    return save, first


@pytest.mark.slow
def test_a_rerun_trains_only_the_missing_seed_and_tabulates_both(corpus, two_seeds, caplog):
    save, first = two_seeds
    with caplog.at_level("INFO"):
        assert trainSpeakerNet.main(argv(corpus, save, "--seeds", "3", "4")) == 0
    assert (save / "seed3" / "model" / "last.model").stat().st_mtime_ns == first  # not trained again
    assert "training already finished" in caplog.text and "epoch 2: loss" in caplog.text
    for seed in (3, 4):
        run = save / f"seed{seed}"
        for rel in ("config.yaml", "model/last.model", "result/test_list/metrics.json", "result/test_list/scores.txt"):
            assert (run / rel).is_file(), (seed, rel)
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "seeds: []\n" in config and f"save_path: {run}\n" in config
    rows = list(csv.DictReader((save / "seeds.csv").open()))
    runs = [str(save / "seed3"), str(save / "seed4")]
    label = f"2 seeds of {save} (seed3, seed4)"
    assert [r["system"] for r in rows] == [*runs, f"mean of {label}", f"std of {label}"]
    assert [r["seed"] for r in rows[:2]] == ["3", "4"] and {r["list"] for r in rows} == {"test_list"}
    metrics = [raw_metrics(save / f"seed{s}") for s in (3, 4)]
    eers = [m["eer_percent"] for m in metrics]
    assert float(rows[0]["eer_percent"]) == pytest.approx(eers[0])
    assert [float(rows[1]["eer_ci95_low"]), float(rows[1]["eer_ci95_high"])] == metrics[1]["eer_ci95_percent"]
    assert float(rows[2]["eer_percent"]) == pytest.approx(np.mean(eers))
    assert float(rows[3]["eer_percent"]) == pytest.approx(np.std(eers, ddof=1))
    assert float(rows[2]["min_dcf_p0.01"]) == pytest.approx(np.mean([m["min_dcf_p0.01"] for m in metrics]))
    table = (save / "seeds.md").read_text()
    assert table.startswith("| system | list | EER % (95% CI) |") and f"| mean of {label} | test_list |" in table
    assert f"| std of {label} | test_list |" in table and not (save / "config.yaml").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--seeds", "1", "2", "1"], "--seeds gives 1 more than once"),
    (["--seeds", "1", "two"], "Option 'seeds' in the command line expects a list of int, got ['1', 'two']"),
    (["--seeds", "1.5"], "expects a list of int"),
    (["--seeds", "1", "2", "--extract", "x.txt", "--extract_out", "x.npz"], "--extract embeds with one model"),
])
def test_bad_seeds_are_one_clear_error_before_any_work(corpus, tmp_path, caplog, extra, fragment):
    assert trainSpeakerNet.main(argv(corpus, tmp_path / "bad", *extra)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and fragment in errors[0], errors
    assert not (tmp_path / "bad").exists()
