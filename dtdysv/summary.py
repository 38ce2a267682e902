"""Tables of results across experiments: one row per experiment folder and labelled test list from the list's
metrics.json (EER and minDCF with their 95% intervals, trials), with mean and standard-deviation rows for the folders
whose config.yaml differ only in ``seed`` (and ``save_path``); written as Markdown and CSV. ``compareSystems.py
--summary`` prints them and ``trainSpeakerNet.py --seeds`` writes the table of its runs. Result folders are read
through dtdysv/evaluation/results.py, which owns their layout and formats.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from config import load_yaml
from dtdysv.errors import UserError
from dtdysv.evaluation.results import METRICS_FILE, ROLE_CALIBRATION, list_folders, read_list_metrics, require_lists
from dtdysv.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)


def result_lists(folder: Path) -> dict[str, Path]:
    """list name -> list folder of an experiment folder, its result/ folder or one list's folder; UserError for a
    folder of the older flat layout or without any evaluated list."""
    for candidate in (folder / "result", folder):
        if found := list_folders(candidate):
            return found
    if (folder / METRICS_FILE).is_file():
        read_list_metrics(folder)  # a list's folder, or the older flat layout's result folder (refused)
        return {folder.name: folder}
    return require_lists(folder / "result" if (folder / "result").is_dir() else folder)


def is_test_list(folder: Path) -> bool:
    """Whether a list's folder holds a test list (not the --calibration_list of its evaluation)."""
    return read_list_metrics(folder).get("role") != ROLE_CALIBRATION


def with_ci(value: float, ci: Sequence[float | None] | None, digits: int, signed: bool = False) -> str:
    """'1.234 [1.100, 1.400]': a figure and its interval (the figure alone when there is none)."""
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if ci is None or None in ci or not np.isfinite(ci).all():
        return text
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _figures(folder: Path, metrics: dict[str, Any], scores_file: str) -> dict[str, Any]:
    """The entry of a list's metrics.json for the variant whose score file is ``scores_file``."""
    for entry in metrics["variants"].values():
        if entry.get("scores_file") == scores_file:
            return entry
    present = ", ".join(entry.get("scores_file", "?") for entry in metrics["variants"].values())
    raise UserError(f"'{folder / METRICS_FILE}' has no figures of {scores_file} (--scores_file); its score files: "
                    f"{present}.")


def summary_rows(folders: Sequence[str | Path], list_name: str | None = None,
                 scores_file: str = "scores.txt") -> list[dict[str, Any]]:
    """One row per folder and labelled test list (every one, or ``list_name``): system, list, seed, config and the
    figures of its ``scores_file``; then a mean and a std row after each group of rows of one list whose folders'
    config.yaml differ only in seed and save_path."""
    rows = []
    for folder in map(Path, folders):
        found = result_lists(folder)
        if list_name is not None and list_name not in found:
            raise UserError(f"'{folder}' has no list '{list_name}' (--list); its lists: {', '.join(found)}.")
        for name in [list_name] if list_name is not None else found:
            metrics = read_list_metrics(found[name])
            skip = ("it is the --calibration_list: its figures are training figures, not a test result"
                    if metrics.get("role") == ROLE_CALIBRATION else "")
            entry = _figures(found[name], metrics, scores_file)
            skip = skip or ("" if "eer_percent" in entry else "it is unlabeled: it has no metrics")
            if skip and list_name is not None:
                raise UserError(f"The list '{name}' of '{folder}' cannot be tabulated: {skip}.")
            if skip:
                log.info("the list '%s' of '%s' is left out: %s", name, folder, skip)
                continue
            config_file = found[name].parent.parent / "config.yaml"
            config = load_yaml(config_file) if config_file.is_file() else None
            rows.append({"system": str(folder), "list": name, "seed": config.get("seed") if config else None,
                         "config": config, **{k: v for k, v in entry.items() if k.startswith(
                             ("eer_percent", "eer_ci95", "min_dcf_p")) and not k.endswith("_threshold")},
                         "n_trials": entry.get("n_trials")})
    if not rows:
        raise UserError(f"The folders hold no labelled test list to tabulate ({', '.join(map(str, folders))}).")
    return _with_seed_statistics(rows)


def _with_seed_statistics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["config"] is not None:
            rest = {k: v for k, v in row["config"].items() if k not in ("seed", "save_path")}
            groups.setdefault(json.dumps([row["list"], rest], sort_keys=True, default=str), []).append(row)
    out = []
    for row in rows:
        out.append(row)
        group = next((g for g in groups.values() if g[-1] is row), None)
        if group is None or len(group) < 2 or len({r["seed"] for r in group}) < 2:
            continue
        keys = [k for k in row if k.startswith(("eer_percent", "min_dcf_p")) and not k.endswith("_ci95")]
        label = f"{len(group)} seeds ({', '.join(r['system'] for r in group)})"
        values = {k: np.array([r[k] for r in group], dtype=np.float64) for k in keys}
        out.append({"system": f"mean of {label}", "list": row["list"],
                    **{k: float(v.mean()) for k, v in values.items()}, "n_trials": row["n_trials"]})
        out.append({"system": f"std of {label}", "list": row["list"],
                    **{k: float(v.std(ddof=1)) for k, v in values.items()}, "n_trials": row["n_trials"]})
    return out


def _dcf_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("min_dcf_p") and not k.endswith("_ci95")}
    return sorted(keys, key=lambda k: float(k[len("min_dcf_p"):]))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    dcf = _dcf_keys(rows)
    header = ["system", "list", "EER % (95% CI)", *(f"minDCF p={float(k[9:]):g} (95% CI)" for k in dcf), "trials"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [r["system"], r["list"], _cell(r, "eer_percent", "eer_ci95_percent", 2),
                 *(_cell(r, k, f"{k}_ci95", 4) for k in dcf), f"{r['n_trials']:,}" if r.get("n_trials") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], key: str, ci_key: str, digits: int) -> str:
    return "" if row.get(key) is None else with_ci(row[key], row.get(ci_key), digits)


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    dcf = _dcf_keys(rows)
    columns = ["system", "list", "seed", "eer_percent", "eer_ci95_low", "eer_ci95_high"]
    for k in dcf:
        columns += [k, f"{k}_ci95_low", f"{k}_ci95_high"]
    columns.append("n_trials")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        flat = {"system": r["system"], "list": r["list"], "seed": r.get("seed"), "n_trials": r.get("n_trials")}
        for key, ci_key, name in (("eer_percent", "eer_ci95_percent", "eer"), *((k, f"{k}_ci95", k) for k in dcf)):
            ci = r.get(ci_key) or [None, None]
            flat.update({key: r.get(key), f"{name}_ci95_low": ci[0], f"{name}_ci95_high": ci[1]})
        writer.writerow(["" if flat.get(c) is None else flat[c] for c in columns])
    return buffer.getvalue()


def write_summary(folders: Sequence[str | Path], markdown: str | Path | None = None, csv_path: str | Path | None = None,
                  list_name: str | None = None, scores_file: str = "scores.txt") -> str:
    """The Markdown table of ``folders`` (:func:`summary_rows`), also written to ``markdown`` and, as CSV, to
    ``csv_path`` when given; returns the Markdown."""
    rows = summary_rows(folders, list_name, scores_file)
    table = markdown_table(rows)
    if markdown:
        atomic_write_text(markdown, table)
    if csv_path:
        atomic_write_text(csv_path, csv_table(rows))
    return table
