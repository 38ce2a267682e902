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
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from config import load_yaml
from dtdysv.errors import UserError
from dtdysv.evaluation.results import METRICS_FILE, ROLE_CALIBRATION, list_folders, read_list_metrics, require_lists
from dtdysv.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)

FIGURES = ("eer_percent", "eer_ci95", "min_dcf_p", "cllr_bits", "act_dcf_p")  # the keys a row keeps
MEANS = ("eer_percent", "min_dcf_p", "cllr_bits", "act_dcf_p")  # the keys a seed group's mean and std cover


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


def summary_rows(folders: Sequence[str | Path], list_name: str | None = None, scores_file: str = "scores.txt",
                 every_variant: bool = False) -> list[dict[str, Any]]:
    """One row per folder and labelled test list (every one, or ``list_name``): system, list, seed, config and the
    figures of its ``scores_file`` (``every_variant``: a row per score variant of the list, raw, normalised and
    calibrated, with its Cllr and actual DCF); then a mean and a std row after each group of rows of one list (and
    variant) whose folders' config.yaml differ only in seed and save_path."""
    rows = []
    for folder in map(Path, folders):
        found = result_lists(folder)
        if list_name is not None and list_name not in found:
            raise UserError(f"'{folder}' has no list '{list_name}' (--list); its lists: {', '.join(found)}.")
        for name in [list_name] if list_name is not None else found:
            metrics = read_list_metrics(found[name])
            skip = ("it is the --calibration_list: its figures are training figures, not a test result"
                    if metrics.get("role") == ROLE_CALIBRATION else "")
            entries = (dict(metrics["variants"]) if every_variant
                       else {None: _figures(found[name], metrics, scores_file)})
            skip = skip or ("" if all("eer_percent" in e for e in entries.values()) else "it is unlabeled: it has no "
                            "metrics")
            if skip and list_name is not None:
                raise UserError(f"The list '{name}' of '{folder}' cannot be tabulated: {skip}.")
            if skip:
                log.info("the list '%s' of '%s' is left out: %s", name, folder, skip)
                continue
            config_file = found[name].parent.parent / "config.yaml"
            config = load_yaml(config_file) if config_file.is_file() else None
            for variant, entry in entries.items():
                rows.append({"system": str(folder), "list": name, "seed": config.get("seed") if config else None,
                             "config": config, **({"variant": variant} if every_variant else {}),
                             **{k: v for k, v in entry.items()
                                if k.startswith(FIGURES) and not k.endswith("_threshold")},
                             "n_trials": entry.get("n_trials")})
    if not rows:
        raise UserError(f"The folders hold no labelled test list to tabulate ({', '.join(map(str, folders))}).")
    return _with_seed_statistics(rows)


def _with_seed_statistics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with a mean and a std row per group of seeds, after the rows of the folder that completes the group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["config"] is not None:
            rest = {k: v for k, v in row["config"].items() if k not in ("seed", "save_path")}
            key = [row["list"], row.get("variant"), rest]
            groups.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(row)
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        out.append(row)
        if i + 1 < len(rows) and rows[i + 1]["system"] == row["system"]:
            continue  # the statistics follow the last row of a folder
        for group in groups.values():
            if group[-1]["system"] == row["system"] and len({r["seed"] for r in group}) >= 2:
                out += _statistics(group)
    return out


def seeds_label(systems: Sequence[str]) -> str:
    """'3 seeds of exps/x (seed1, seed2, seed3)': the runs named relative to the folder they share, if any."""
    parent = os.path.commonpath(systems) if len({Path(s).is_absolute() for s in systems}) == 1 else ""
    if parent in ("", ".", "/") or parent in systems:
        return f"{len(systems)} seeds ({', '.join(systems)})"
    return f"{len(systems)} seeds of {parent} ({', '.join(os.path.relpath(s, parent) for s in systems)})"


def _statistics(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mean and the std row of the rows of one group of seeds."""
    last = group[-1]
    keys = [k for k in last if k.startswith(MEANS) and not k.endswith("_ci95")]
    variant = {"variant": last["variant"]} if "variant" in last else {}
    label = seeds_label([r["system"] for r in group])
    values = {k: np.array([r[k] for r in group], dtype=np.float64) for k in keys}
    return [{"system": f"{stat} of {label}", "list": last["list"], **variant,
             **{k: float(fn(v)) for k, v in values.items()}, "n_trials": last["n_trials"]}
            for stat, fn in (("mean", np.mean), ("std", lambda v: np.std(v, ddof=1)))]


def _dcf_keys(rows: Sequence[dict[str, Any]], prefix: str = "min_dcf_p") -> list[str]:
    keys = {k for r in rows for k in r if k.startswith(prefix) and not k.endswith("_ci95")}
    return sorted(keys, key=lambda k: float(k[len(prefix):]))


def _columns(rows: Sequence[dict[str, Any]]) -> tuple[bool, list[str], list[str]]:
    """(a variant column?, the minDCF keys, the calibration keys: Cllr and actual DCF, with every variant only)."""
    variants = any("variant" in r for r in rows)
    calibration = (["cllr_bits"] + _dcf_keys(rows, "act_dcf_p")) if variants else []
    return variants, _dcf_keys(rows), calibration


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    variants, dcf, calibration = _columns(rows)
    header = ["system", "list", *(["variant"] if variants else []), "EER % (95% CI)",
              *(f"minDCF p={float(k[9:]):g} (95% CI)" for k in dcf),
              *("Cllr (bits)" if k == "cllr_bits" else f"actDCF p={float(k[9:]):g}" for k in calibration), "trials"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [r["system"], r["list"], *([r.get("variant") or ""] if variants else []),
                 _cell(r, "eer_percent", "eer_ci95_percent", 2), *(_cell(r, k, f"{k}_ci95", 4) for k in dcf),
                 *(_cell(r, k, "", 4) for k in calibration), f"{r['n_trials']:,}" if r.get("n_trials") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], key: str, ci_key: str, digits: int) -> str:
    return "" if row.get(key) is None else with_ci(row[key], row.get(ci_key), digits)


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    variants, dcf, calibration = _columns(rows)
    columns = ["system", "list", *(["variant"] if variants else []), "seed", "eer_percent", "eer_ci95_low",
               "eer_ci95_high"]
    for k in dcf:
        columns += [k, f"{k}_ci95_low", f"{k}_ci95_high"]
    columns += [*calibration, "n_trials"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        flat = {"system": r["system"], "list": r["list"], "variant": r.get("variant"), "seed": r.get("seed"),
                "n_trials": r.get("n_trials"), **{k: r.get(k) for k in calibration}}
        for key, ci_key, name in (("eer_percent", "eer_ci95_percent", "eer"), *((k, f"{k}_ci95", k) for k in dcf)):
            ci = r.get(ci_key) or [None, None]
            flat.update({key: r.get(key), f"{name}_ci95_low": ci[0], f"{name}_ci95_high": ci[1]})
        writer.writerow(["" if flat.get(c) is None else flat[c] for c in columns])
    return buffer.getvalue()


def write_summary(folders: Sequence[str | Path], markdown: str | Path | None = None, csv_path: str | Path | None = None,
                  list_name: str | None = None, scores_file: str = "scores.txt", every_variant: bool = False) -> str:
    """The Markdown table of ``folders`` (:func:`summary_rows`), also written to ``markdown`` and, as CSV, to
    ``csv_path`` when given; returns the Markdown."""
    rows = summary_rows(folders, list_name, scores_file, every_variant)
    table = markdown_table(rows)
    if markdown:
        atomic_write_text(markdown, table)
    if csv_path:
        atomic_write_text(csv_path, csv_table(rows))
    return table
