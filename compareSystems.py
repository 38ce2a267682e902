#!/usr/bin/env python
"""Compare speaker-verification systems: a paired bootstrap of two systems on one trial list, or a table of results.

    python compareSystems.py exps/A exps/B                       # result folders: their list's scores.txt
    python compareSystems.py exps/A exps/B --list O --scores_file scores.asnorm.txt
    python compareSystems.py a/scores.txt b/scores.txt --det det.png --json diff.json
    python compareSystems.py --summary exps/A exps/B_s1 exps/B_s2 --markdown table.md --csv table.csv
    python compareSystems.py --summary --variants exps/A      # raw, normalised and calibrated rows, Cllr, actDCF

Comparison: the trials of the two score files ('score label enroll test') must be the same ones (in any order);
they are aligned, and B - A of the EER and of minDCF at each --p_target gets a 95% interval and a two-sided p-value
from a paired bootstrap: each resample draws the list's speakers (tuneThreshold.trial_clusters) with replacement
and weighs both systems' trials alike, so what the two systems share (the speakers, the trials) cancels in the
difference. Intervals are basic bootstrap intervals; the p-value inverts the difference's interval
(tuneThreshold.difference_test). A result folder (an experiment folder, its result/ or a list's folder) stands for
one list's ``--scores_file`` (default scores.txt, the raw scores; scores.asnorm.txt, scores.cal.txt, ...): the list of
``--list``, else the one test list the folders share (dtdysv/evaluation/results.py describes the folder).

Summary: one row per experiment and test list (every list, or ``--list``) from the list's metrics.json: EER and minDCF
with their 95% intervals of its ``--scores_file`` variant, trials. A --calibration_list is no test list: its figures
are training figures, never tabulated. Folders whose config.yaml differ only in ``seed`` (and ``save_path``) also get
mean and std rows per list (the table is dtdysv/summary.py's, which ``trainSpeakerNet.py --seeds`` writes too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dtdysv.errors import UserError
from dtdysv.evaluation.results import EvalError, ScoreFile, finite_json, read_scores
from dtdysv.runtime.fileio import atomic_write_text
from dtdysv.runtime.setup import setup_logging
from dtdysv.summary import is_test_list, result_lists, with_ci, write_summary
from tuneThreshold import bootstrap_replicates, compute_metrics, difference_test, replicate_intervals, trial_clusters

log = logging.getLogger("compareSystems")


# ---- reading -------------------------------------------------------------------------------------------------------


def pick_list(systems: Sequence[tuple[Path, dict[str, Path]]], name: str | None) -> str:
    """The list of ``--list`` (``name``), else the one test list that every result folder holds; UserError naming
    the lists found otherwise."""
    listing = "; ".join(f"'{folder}': {', '.join(found)}" for folder, found in systems)
    if name is not None:
        for folder, found in systems:
            if name not in found:
                raise UserError(f"'{folder}' has no list '{name}' (--list); the lists found: {listing}.")
        return name
    shared = set.intersection(*({n for n, f in found.items() if is_test_list(f)} for _, found in systems))
    if len(shared) != 1:
        common = f"{len(shared)} test lists ({', '.join(sorted(shared))}) are" if shared else "no test list is"
        raise UserError(f"{common} common to the result folders, so which to compare is not clear; the lists "
                        f"found: {listing}. Choose one with --list NAME.")
    return shared.pop()


def score_paths(paths: Sequence[str | Path], scores_file: str, list_name: str | None) -> list[Path]:
    """Each of ``paths`` as a score file: a file as given, a result folder as its list's ``scores_file`` (the list of
    ``list_name``, else the one test list that the folders share)."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise UserError(f"Score file '{path}' does not exist.")
    folders = {path: result_lists(path) for path in paths if path.is_dir()}
    name = pick_list(list(folders.items()), list_name) if folders else None
    out = []
    for path in paths:
        if path not in folders:
            out.append(path)
            continue
        folder = folders[path][name]
        if not (folder / scores_file).is_file():
            present = sorted(p.name for p in folder.glob("scores*.txt"))
            raise UserError(f"'{folder}' has no {scores_file} (--scores_file); its score files: "
                            f"{', '.join(present) or 'none'}.")
        if not is_test_list(folder):
            log.warning("'%s' is the --calibration_list of its evaluation: its calibrated scores are training "
                        "figures, not those of held-out trials", folder)
        out.append(folder / scores_file)
    return out


def system_name(path: Path) -> str:
    """The experiment folder of a result folder's score file (``<exp>/result/<list>/<file>``), else the file's path."""
    parents = path.parents
    return parents[2].name if len(parents) > 2 and parents[1].name == "result" and parents[2].name else str(path)


def _first_bad_line(path: Path) -> str:
    """Where a score file stops being 'score label enroll test' lines ('' if nowhere)."""
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            ok = len(tokens) == 4 and np.isfinite(float(tokens[0])) and tokens[1] in ("0", "1")
        except ValueError:
            ok = False
        if not ok:
            return f"line {n} is {line.strip()!r}, not 'score label enroll test' (label 0 or 1)"
    return ""


def read_labelled(path: Path) -> ScoreFile:
    """A labelled score file; UserError naming the file (and the line) otherwise."""
    try:
        bad = _first_bad_line(path)
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"Score file '{path}' cannot be read as text: {err}") from None
    if bad:
        raise UserError(f"Score file '{path}': {bad}; a comparison needs labelled trials.")
    try:
        scores = read_scores(path)
    except (EvalError, ValueError) as err:
        raise UserError(f"Score file '{path}': {err}") from None
    return scores


def _keys(s: ScoreFile) -> list[tuple[str, str, int]]:
    """(enroll, test, k): the k-th occurrence of the pair, so that a list may repeat a trial."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for pair in zip(s.enroll, s.test, strict=True):
        k = seen[pair] = seen.get(pair, -1) + 1
        keys.append((*pair, k))
    return keys


def align(a: ScoreFile, b: ScoreFile, path_a: Path, path_b: Path) -> np.ndarray:
    """Indices putting B's trials in A's order; UserError naming the first trial that is not in both (or whose
    label differs)."""
    index = {key: i for i, key in enumerate(_keys(a))}
    order = np.full(len(a.enroll), -1, dtype=np.int64)
    for j, key in enumerate(_keys(b)):
        i = index.get(key)
        if i is None:
            again = f" (occurrence {key[2] + 1})" if key[2] else ""
            raise UserError(f"The trials differ: '{key[0]} {key[1]}'{again}, line {j + 1} of '{path_b}', is not in "
                            f"'{path_a}'.")
        if a.labels[i] != b.labels[j]:
            raise UserError(f"The trials differ: '{key[0]} {key[1]}' is labelled {a.labels[i]} in '{path_a}' (line "
                            f"{i + 1}) and {b.labels[j]} in '{path_b}' (line {j + 1}).")
        order[i] = j
    if (order < 0).any():
        i = int(np.flatnonzero(order < 0)[0])
        raise UserError(f"The trials differ: '{a.enroll[i]} {a.test[i]}', line {i + 1} of '{path_a}', is not in "
                        f"'{path_b}'.")
    return order


# ---- paired comparison ---------------------------------------------------------------------------------------------


def metric_names(p_targets: Sequence[float]) -> dict[str, str]:
    return {"eer_percent": "EER %", **{f"min_dcf_p{float(p)}": f"minDCF p={p:g}" for p in p_targets}}


def compare(a: ScoreFile, b: ScoreFile, p_targets: Sequence[float], c_miss: float, c_fa: float, n_resamples: int,
            seed: int) -> dict[str, Any]:
    """The paired comparison of two aligned labelled score lists (same trials, same order): the JSON content."""
    enroll, test, unit = trial_clusters(a.enroll, a.test, a.labels)
    point = {name: compute_metrics(s.scores, a.labels, p_targets, c_miss, c_fa) for name, s in (("a", a), ("b", b))}
    reps = {name: bootstrap_replicates(s.scores, a.labels, enroll, test, p_targets, c_miss, c_fa, n_resamples, seed)
            for name, s in (("a", a), ("b", b))}
    ci = {name: replicate_intervals(point[name], reps[name]) for name in ("a", "b")}
    figures = {}
    for key in metric_names(p_targets):
        difference = point["b"][key] - point["a"][key]
        tested = difference_test(difference, reps["b"][key] - reps["a"][key])
        figures[key] = {"a": point["a"][key], "a_ci95": list(ci["a"][key]), "b": point["b"][key],
                        "b_ci95": list(ci["b"][key]), "difference": difference,
                        "difference_ci95": [tested["ci_low"], tested["ci_high"]], "p_value": tested["p_value"]}
    n_clusters = len(np.unique(np.concatenate((enroll, test))))
    return {"n_trials": len(a.labels), "n_target": int(a.labels.sum()), "metrics": figures,
            "bootstrap": {"unit": unit, "clusters": n_clusters, "resamples": n_resamples, "seed": seed,
                          "interval": "basic", "p_value": "two-sided, the basic interval inverted"},
            "dcf_c_miss": c_miss, "dcf_c_fa": c_fa, "point": point}


def report(result: dict[str, Any], path_a: Path, path_b: Path, p_targets: Sequence[float]) -> str:
    boot = result["bootstrap"]
    lines = [f"A: {path_a}", f"B: {path_b}",
             f"{result['n_trials']:,} trials ({result['n_target']:,} targets); paired bootstrap over "
             f"{boot['clusters']:,} {boot['unit']}s, {boot['resamples']} resamples (seed {boot['seed']}), "
             f"95% intervals",
             f"{'metric':<16}{'A':<26}{'B':<26}{'B - A':<30}p"]
    for key, name in metric_names(p_targets).items():
        f = result["metrics"][key]
        digits = 3 if key == "eer_percent" else 4
        lines.append(f"{name:<16}{with_ci(f['a'], f['a_ci95'], digits):<26}{with_ci(f['b'], f['b_ci95'], digits):<26}"
                     f"{with_ci(f['difference'], f['difference_ci95'], digits, signed=True):<30}"
                     f"{f['p_value']:.3g}")
    lines.append(verdict(result["metrics"]["eer_percent"]))
    return "\n".join(lines) + "\n"


def verdict(eer: dict[str, Any], level: float = 0.05) -> str:
    """One sentence on the EER difference B - A at the two-sided ``level``."""
    diff, p = eer["difference"], eer["p_value"]
    if p < level:
        better = "B" if diff < 0 else "A"
        return (f"verdict: {better} has the lower EER ({abs(diff):.2f} points, p = {p:.3g}); the difference is "
                f"significant at the {level:g} level")
    return f"verdict: no significant difference in EER at the {level:g} level (B - A = {diff:+.2f} points, p = {p:.3g})"


def run_compare(args: argparse.Namespace) -> None:
    if len(args.systems) != 2:
        raise UserError(f"A comparison takes two score files or result folders, got {len(args.systems)}; "
                        f"use --summary for a table of several.")
    if args.resamples < 1:
        raise UserError(f"--resamples must be >= 1, got {args.resamples}.")
    path_a, path_b = score_paths(args.systems, args.scores_file, args.list)
    a, b = read_labelled(path_a), read_labelled(path_b)
    order = align(a, b, path_a, path_b)
    b = ScoreFile(b.scores[order], a.labels, a.enroll, a.test)
    try:
        result = compare(a, b, args.p_target, args.c_miss, args.c_fa, args.resamples, args.seed)
    except ValueError as err:  # e.g. a list of one class, which has no error rates
        raise UserError(f"The trials of '{path_a}' cannot be compared: {err}") from None
    sys.stdout.write(report(result, path_a, path_b, args.p_target))
    result.update(a=str(path_a), b=str(path_b))
    if args.json:
        atomic_write_text(args.json, json.dumps(finite_json(result), indent=2) + "\n")
        log.info("wrote %s", args.json)
    if args.det:
        from dtdysv.evaluation.plot import plot_det

        names = args.names or [f"A: {system_name(path_a)}", f"B: {system_name(path_b)}"]
        curves = [(names[0], a.scores, a.labels, result["point"]["a"], "-"),
                  (names[1], b.scores, b.labels, result["point"]["b"], "--")]
        plot_det(curves, Path(args.det), sorted(args.p_target))
        log.info("wrote %s", args.det)


# ---- summary table -------------------------------------------------------------------------------------------------


def run_summary(args: argparse.Namespace) -> None:
    if not args.systems:
        raise UserError("--summary needs one or more experiment or result folders.")
    sys.stdout.write(write_summary(args.systems, args.markdown, args.csv, args.list, args.scores_file, args.variants))
    for path in (args.markdown, args.csv):
        if path:
            log.info("wrote %s", path)


# ---- command line --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compareSystems.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("systems", nargs="*", help="two score files or result folders (A, then B); with --summary, "
                                                   "experiment or result folders")
    parser.add_argument("--summary", action="store_true", help="a table of the folders' test lists (their "
                                                                  "metrics.json) instead")
    parser.add_argument("--variants", action="store_true", help="--summary: a row per score variant of each list "
                        "(raw, normalised, calibrated) with its Cllr and actual DCF, instead of --scores_file's")
    parser.add_argument("--scores_file", default="scores.txt", help="the variant read in a list's folder: "
                                                                    "scores.txt (raw, the default), scores.asnorm.txt, "
                                                                    "scores.snorm.txt, scores.cal.txt")
    parser.add_argument("--p_target", type=float, nargs="+", default=[0.01, 0.05], help="minDCF priors")
    parser.add_argument("--c_miss", type=float, default=1.0, help="minDCF cost of a miss")
    parser.add_argument("--c_fa", type=float, default=1.0, help="minDCF cost of a false alarm")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    parser.add_argument("--names", nargs=2, metavar=("A", "B"), help="names of the systems in the DET legend")
    parser.add_argument("--det", help="write both DET curves to this PNG")
    parser.add_argument("--json", help="write the comparison's figures to this JSON file")
    parser.add_argument("--list", help="the trial list of the result folders (result/<list>/); default: the one "
                                       "test list they share, and with --summary every test list")
    parser.add_argument("--markdown", help="--summary: also write the table to this Markdown file")
    parser.add_argument("--csv", help="--summary: also write the table to this CSV file")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        if any(not 0.0 < p < 1.0 for p in args.p_target) or args.c_miss <= 0 or args.c_fa <= 0:
            raise UserError(f"--p_target must be in (0, 1) and --c_miss, --c_fa > 0, got {args.p_target}, "
                            f"{args.c_miss}, {args.c_fa}.")
        if args.summary:
            run_summary(args)
        else:
            run_compare(args)
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
