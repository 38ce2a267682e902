"""Intervals in metrics.json (the metrics stage on hand-made score files) and compareSystems.py: the paired comparison
of two systems, its checks of the trials, the choice of the list in result folders, and the summary table."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import compareSystems
from config import Config, save_config
from dtdysv.evaluation.metrics import metrics_stage, rerun_metrics
from dtdysv.evaluation.results import ROLE_CALIBRATION, EvalRun, ListResult, ScoreSet
from dtdysv.summary import summary_rows, write_summary

N_SPEAKERS = 12


def trial_list(seed: int, n_per_speaker: int = 30):
    """(labels, enroll, test) with VoxCeleb-style names: every speaker has n targets and n non-targets."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(N_SPEAKERS):
        for k in range(n_per_speaker):
            other = (s + 1 + k % (N_SPEAKERS - 1)) % N_SPEAKERS
            rows.append((1, f"id{s:03d}/v0/{k:05d}.wav", f"id{s:03d}/v1/{k:05d}.wav"))
            rows.append((0, f"id{s:03d}/v0/{k:05d}.wav", f"id{other:03d}/v1/{k:05d}.wav"))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def system_scores(trials, separation: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    speaker = {f"id{s:03d}": rng.normal(0.0, 0.3) for s in range(N_SPEAKERS)}  # some voices are harder
    labels = np.array([t[0] for t in trials])
    effect = np.array([speaker[e.split("/")[0]] for _, e, _ in trials])
    return separation * labels + effect * labels + rng.normal(size=len(trials))


def write_scores(path, trials, scores, order=None):
    order = range(len(trials)) if order is None else order
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{scores[i]:.6f} {trials[i][0]} {trials[i][1]} {trials[i][2]}\n" for i in order))
    return path


def run(*argv):
    return compareSystems.main([str(a) for a in argv])


# ---- metrics.json ----------------------------------------------------------------------------------------------


def stage(result_dir, bootstrap=200, name="list", calibration=False, variant="raw"):
    """The metrics stage on <result_dir>/<name>/scores.txt (or the variant's file), described as the score stage
    describes a list."""
    part = ScoreSet(variant, {"test_list": f"{name}.txt"})
    part.info["n_trials"] = len((result_dir / name / part.scores_file).read_text().splitlines())
    item = ListResult(name, None, calibration, **{"raw" if variant == "raw" else "norm": part})
    return metrics_stage(EvalRun(Config(bootstrap=bootstrap), result_dir, checkpoint="ckpt.model"), [item])[name]


def test_metrics_json_gets_intervals_from_the_metrics_stage(tmp_path, caplog):
    trials = trial_list(0)
    write_scores(tmp_path / "list" / "scores.txt", trials, system_scores(trials, 2.0, 0))
    with caplog.at_level(logging.INFO, logger="dtdysv.evaluation.metrics"):
        stage(tmp_path)
    saved = read_json(tmp_path / "list" / "metrics.json")
    assert (saved["list"], saved["role"], saved["checkpoint"]) == ("list", "test (held out)", "ckpt.model")
    raw = saved["variants"]["raw"]
    assert raw["bootstrap"] == {"unit": "speaker", "resamples": 200, "seed": 0, "interval": "basic"}
    for key, ci_key in (("eer_percent", "eer_ci95_percent"), ("min_dcf_p0.01", "min_dcf_p0.01_ci95"),
                        ("min_dcf_p0.05", "min_dcf_p0.05_ci95")):
        lo, hi = raw[ci_key]
        assert 0 <= lo < hi and lo <= raw[key] + 1e-9 and hi > 0
    lo, hi = raw["eer_ci95_percent"]
    assert f"EER {raw['eer_percent']:.3f}% [{lo:.2f}, {hi:.2f}]" in caplog.text
    # the same intervals when rerun (fixed seed); none with --bootstrap 0
    before = (tmp_path / "list" / "metrics.json").read_bytes()
    rerun_metrics(EvalRun(Config(bootstrap=200), tmp_path))
    assert (tmp_path / "list" / "metrics.json").read_bytes() == before
    stage(tmp_path, bootstrap=0)
    assert not {"eer_ci95_percent", "bootstrap", "min_dcf_p0.01_ci95"} & set(
        read_json(tmp_path / "list" / "metrics.json")["variants"]["raw"])


def read_json(path):
    return json.loads(path.read_text())


def test_names_without_speaker_folders_resample_files(tmp_path):
    trials = [(label, e.replace("/", "_"), t.replace("/", "_")) for label, e, t in trial_list(1, 10)]
    write_scores(tmp_path / "list" / "scores.txt", trials, system_scores(trial_list(1, 10), 2.0, 1))
    assert stage(tmp_path, bootstrap=50)["variants"]["raw"]["bootstrap"]["unit"] == "file"


# ---- paired comparison --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """Result folders of one list: A, A again with its trials in another order, a much better B, B with one label
    flipped."""
    root = tmp_path_factory.mktemp("systems")
    trials = trial_list(2)
    a, b = system_scores(trials, 1.0, 1), system_scores(trials, 3.5, 2)
    for name, scores in (("A", a), ("B", b)):
        write_scores(root / name / "result" / "O" / "scores.txt", trials, scores)
        stage(root / name / "result", bootstrap=0, name="O")
    write_scores(root / "A_shuffled.txt", trials, a, np.random.default_rng(0).permutation(len(trials)))
    flipped = [(1 - trials[0][0], *trials[0][1:]), *trials[1:]]
    write_scores(root / "B_flipped.txt", flipped, b)
    write_scores(root / "B_short.txt", trials[:-1], b)
    return root


def test_identical_systems_differ_by_exactly_zero(systems, tmp_path, capsys):
    assert run(systems / "A", systems / "A_shuffled.txt", "--resamples", 200, "--json", tmp_path / "d.json") == 0
    assert "verdict: no significant difference in EER at the 0.05 level (B - A = +0.00 points, p = 1)" in \
        capsys.readouterr().out
    for figures in read_json(tmp_path / "d.json")["metrics"].values():
        assert figures["difference"] == 0.0 and figures["difference_ci95"] == [0.0, 0.0]
        assert figures["p_value"] == 1.0 and figures["a_ci95"] == figures["b_ci95"]


def test_a_clearly_better_system_has_an_interval_excluding_zero(systems, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert run(systems / "A", systems / "B", "--resamples", 300, "--json", out, "--det", tmp_path / "det.png") == 0
    result = read_json(out)
    assert result["bootstrap"]["unit"] == "speaker" and result["bootstrap"]["clusters"] == N_SPEAKERS
    eer = result["metrics"]["eer_percent"]
    assert eer["difference"] < 0 and eer["difference_ci95"][1] < 0 and eer["p_value"] < 0.01
    assert eer["difference"] == pytest.approx(eer["b"] - eer["a"])
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "EER %" in printed and "minDCF p=0.01" in printed and f"{eer['p_value']:.3g}" in printed
    assert f"verdict: B has the lower EER ({-eer['difference']:.2f} points" in printed
    # the order of B's lines does not matter; A and B swapped: the difference changes sign
    assert run(systems / "B", systems / "A_shuffled.txt", "--resamples", 300, "--json", out) == 0
    swapped = read_json(out)["metrics"]["eer_percent"]
    assert swapped["difference"] == -eer["difference"]
    assert swapped["difference_ci95"] == pytest.approx([-eer["difference_ci95"][1], -eer["difference_ci95"][0]])


def test_different_trials_are_refused_naming_the_trial(systems, caplog):
    assert run(systems / "A", systems / "B_short.txt") == 2
    assert "The trials differ" in caplog.text and "is not in" in caplog.text and "B_short.txt" in caplog.text
    caplog.clear()
    assert run(systems / "A", systems / "B_flipped.txt") == 2
    assert "is labelled" in caplog.text and "(line 1)" in caplog.text


def test_missing_and_malformed_files_exit_2_naming_them(systems, tmp_path, caplog):
    assert run(systems / "A", tmp_path / "nothere.txt") == 2
    assert "nothere.txt' does not exist" in caplog.text
    bad = tmp_path / "bad.txt"
    bad.write_text("0.5 1 a/x.wav a/y.wav\nhigh 0 a/x.wav b/y.wav\n")
    assert run(systems / "A", bad) == 2
    assert "bad.txt': line 2 is 'high 0 a/x.wav b/y.wav'" in caplog.text
    assert run(systems / "A", tmp_path) == 2
    assert f"'{tmp_path}' holds no evaluated trial list" in caplog.text
    caplog.clear()
    assert run(systems / "A", systems / "B", "--scores_file", "scores.asnorm.txt") == 2
    assert f"'{systems / 'A' / 'result' / 'O'}' has no scores.asnorm.txt (--scores_file); its score files: " \
           "scores.txt" in caplog.text
    assert run(systems / "A") == 2
    assert "two score files or result folders, got 1" in caplog.text


# ---- the list of a result folder -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_lists(tmp_path_factory):
    """Result folders A and B with the lists O and E; A also with the --calibration_list C, B with the list H."""
    root = tmp_path_factory.mktemp("lists")
    trials = {"O": trial_list(4, 10), "E": trial_list(5, 10), "C": trial_list(6, 10), "H": trial_list(7, 10)}
    for system, names, separation in (("A", "OEC", 1.0), ("B", "OEH", 3.0)):
        for i, name in enumerate(names):
            write_scores(root / system / "result" / name / "scores.txt", trials[name],
                         system_scores(trials[name], separation + i, i))
            stage(root / system / "result", bootstrap=0, name=name, calibration=name == "C")
    return root


def compared(tmp_path, *argv) -> dict:
    assert run(*argv, "--resamples", 20, "--json", tmp_path / "d.json") == 0
    return read_json(tmp_path / "d.json")


def test_the_list_is_the_one_test_list_the_folders_share_or_that_of_list(two_lists, tmp_path, caplog):
    a, b = two_lists / "A", two_lists / "B"
    assert run(a, b) == 2  # O and E are in both: which one is not clear
    assert "2 test lists (E, O) are common to the result folders" in caplog.text
    assert f"'{a}': C, E, O; '{b}': E, H, O" in caplog.text and "--list NAME" in caplog.text
    for name in ("O", "E"):
        result = compared(tmp_path, a, b, "--list", name)
        assert (result["a"], result["b"]) == (str(a / "result" / name / "scores.txt"),
                                              str(b / "result" / name / "scores.txt"))
    caplog.clear()
    assert run(a, b, "--list", "H") == 2
    assert f"'{a}' has no list 'H' (--list); the lists found: '{a}': C, E, O" in caplog.text
    # a folder and a score file: the folder's only test list (C is the calibration list); a list's own folder
    only = tmp_path / "only" / "result"
    for name in ("O", "C"):
        (only / name).mkdir(parents=True)
        for file in ("scores.txt", "metrics.json"):
            (only / name / file).write_bytes((a / "result" / name / file).read_bytes())
    assert compared(tmp_path, only.parent, a / "result" / "O" / "scores.txt")["a"] == str(only / "O" / "scores.txt")
    assert compared(tmp_path, b / "result" / "E", a / "result")["b"] == str(a / "result" / "E" / "scores.txt")


def test_a_result_folder_of_the_older_flat_layout_is_refused(two_lists, tmp_path, caplog):
    old = tmp_path / "old" / "result"
    old.mkdir(parents=True)
    (old / "scores.txt").write_bytes((two_lists / "A" / "result" / "O" / "scores.txt").read_bytes())
    (old / "metrics.json").write_text(json.dumps({"test_list": "O.txt", "eer_percent": 1.0, "checkpoint": ""}))
    for argv in ((two_lists / "A", old.parent, "--list", "O"), ("--summary", old)):
        caplog.clear()
        assert run(*argv) == 2
        assert f"'{old}' was written by an older version" in caplog.text and "Rerun trainSpeakerNet.py --eval" in \
            caplog.text


# ---- summary table ------------------------------------------------------------------------------------------------


def experiment(root, name, trials, scores, **config):
    folder = root / name
    write_scores(folder / "result" / "O" / "scores.txt", trials, scores)
    stage(folder / "result", bootstrap=100, name="O")
    save_config(Config(save_path=str(folder), **config), folder / "config.yaml")
    return folder


def test_summary_table_of_result_folders_with_seed_statistics(tmp_path, capsys):
    trials = trial_list(3, 15)
    seeds = [experiment(tmp_path, f"dtdy_s{s}", trials, system_scores(trials, 2.0, s), seed=s) for s in (1, 2, 3)]
    other = experiment(tmp_path, "resnet", trials, system_scores(trials, 1.0, 9), model="ResNet34_half")
    md, table = tmp_path / "t.md", tmp_path / "t.csv"
    assert run("--summary", *seeds, other, "--markdown", md, "--csv", table) == 0
    rows = list(csv.DictReader(table.open()))
    label = f"3 seeds of {tmp_path} (dtdy_s1, dtdy_s2, dtdy_s3)"  # the runs named within the folder they share
    assert [r["system"] for r in rows] == [*map(str, seeds), f"mean of {label}", f"std of {label}", str(other)]
    assert {r["list"] for r in rows} == {"O"}
    eers = [read_json(s / "result" / "O" / "metrics.json")["variants"]["raw"]["eer_percent"] for s in seeds]
    assert float(rows[3]["eer_percent"]) == pytest.approx(np.mean(eers))
    assert float(rows[4]["eer_percent"]) == pytest.approx(np.std(eers, ddof=1))
    first = read_json(seeds[0] / "result" / "O" / "metrics.json")["variants"]["raw"]
    assert [float(rows[0]["eer_ci95_low"]), float(rows[0]["eer_ci95_high"])] == first["eer_ci95_percent"]
    assert rows[0]["seed"] == "1" and rows[0]["n_trials"] == str(len(trials)) and rows[3]["eer_ci95_low"] == ""
    text = md.read_text()
    assert text == capsys.readouterr().out
    assert text.startswith("| system | list | EER % (95% CI) | minDCF p=0.01 (95% CI) | minDCF p=0.05 (95% CI) | "
                           "trials |")
    lo, hi = first["eer_ci95_percent"]
    assert f"| {seeds[0]} | O | {first['eer_percent']:.2f} [{lo:.2f}, {hi:.2f}] |" in text


def test_summary_has_a_row_per_test_list_and_never_the_calibration_list(two_lists, tmp_path, caplog):
    a, b = two_lists / "A", two_lists / "B"
    with caplog.at_level(logging.INFO):
        rows = summary_rows([a, b])
    assert [(r["system"], r["list"]) for r in rows] == [(str(a), "E"), (str(a), "O"), (str(b), "E"), (str(b), "H"),
                                                        (str(b), "O")]
    assert "the list 'C' of" in caplog.text and "training figures, not a test result" in caplog.text
    assert read_json(a / "result" / "C" / "metrics.json")["role"] == ROLE_CALIBRATION
    for row in rows:
        entry = read_json(two_lists / row["system"] / "result" / row["list"] / "metrics.json")["variants"]["raw"]
        assert row["eer_percent"] == entry["eer_percent"]
    assert [r["list"] for r in summary_rows([a, b], "E")] == ["E", "E"]
    assert run("--summary", a, "--list", "C") == 2
    assert "The list 'C' of" in caplog.text and "--calibration_list: its figures are training figures" in caplog.text
    assert run("--summary", a, b, "--list", "H") == 2
    assert f"'{a}' has no list 'H' (--list); its lists: C, E, O." in caplog.text


def test_summary_tabulates_the_variant_of_scores_file(tmp_path, caplog):
    trials = trial_list(8, 10)
    folder = experiment(tmp_path, "exp", trials, system_scores(trials, 1.0, 1))
    write_scores(folder / "result" / "O" / "scores.asnorm.txt", trials, system_scores(trials, 4.0, 2))
    stage(folder / "result", bootstrap=0, name="O", variant="asnorm")  # beside the raw variant of the same source
    variants = read_json(folder / "result" / "O" / "metrics.json")["variants"]
    assert list(variants) == ["raw", "asnorm"]
    raw_row, = summary_rows([folder])
    norm_row, = summary_rows([folder], scores_file="scores.asnorm.txt")
    assert raw_row["eer_percent"] == variants["raw"]["eer_percent"] != norm_row["eer_percent"]
    assert norm_row["eer_percent"] == variants["asnorm"]["eer_percent"]
    assert run("--summary", folder, "--scores_file", "scores.cal.txt") == 2
    assert "has no figures of scores.cal.txt (--scores_file); its score files: scores.txt, scores.asnorm.txt" in \
        caplog.text


def test_summary_with_every_variant_gives_a_row_per_variant_with_its_calibration_figures(tmp_path):
    trials = trial_list(8, 10)
    seeds = [experiment(tmp_path, f"s{s}", trials, system_scores(trials, 1.0, s), seed=s) for s in (1, 2)]
    for s, folder in enumerate(seeds):
        write_scores(folder / "result" / "O" / "scores.asnorm.txt", trials, system_scores(trials, 4.0, 10 + s))
        stage(folder / "result", bootstrap=0, name="O", variant="asnorm")
    table = tmp_path / "t.csv"
    assert run("--summary", "--variants", *seeds, "--csv", table) == 0
    rows = list(csv.DictReader(table.open()))
    assert [(r["system"], r["variant"]) for r in rows] == [
        (str(seeds[0]), "raw"), (str(seeds[0]), "asnorm"), (str(seeds[1]), "raw"), (str(seeds[1]), "asnorm"),
        *((f"{stat} of 2 seeds of {tmp_path} (s1, s2)", v) for v in ("raw", "asnorm") for stat in ("mean", "std"))]
    for row in rows[:4]:
        entry = read_json(Path(row["system"]) / "result" / "O" / "metrics.json")["variants"][row["variant"]]
        for key in ("eer_percent", "cllr_bits", "act_dcf_p0.01"):
            assert float(row[key]) == pytest.approx(entry[key]), key
    asnorm = [read_json(f / "result" / "O" / "metrics.json")["variants"]["asnorm"]["cllr_bits"] for f in seeds]
    mean_asnorm = next(r for r in rows if r["system"].startswith("mean") and r["variant"] == "asnorm")
    assert float(mean_asnorm["cllr_bits"]) == pytest.approx(np.mean(asnorm))
    text = write_summary([seeds[0]], every_variant=True)
    assert text.startswith("| system | list | variant | EER % (95% CI) |") and "| Cllr (bits) | actDCF p=0.01 |" in text


def test_summary_refuses_a_folder_without_metrics(tmp_path, caplog):
    assert run("--summary", tmp_path) == 2
    assert f"'{tmp_path}' holds no evaluated trial list (no <list>/metrics.json)" in caplog.text
