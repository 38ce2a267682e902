"""The metrics stage: score files -> ``metrics.json`` (EER, voxceleb_trainer's EER, minDCF: tuneThreshold; Cllr
and actual DCF: calibration.py).

metrics.json holds the first list's description and metrics at the top level, with several lists also
"lists": {name: ...}; normalised scores have their own under "norm", calibrated scores (llrs) under "cal"; an
unlabeled list has no metrics. Cllr (``cllr_bits``) and the actual DCF (``act_dcf_p<p>``, deciding at the Bayes
threshold of the scores read as llrs) are reported for every score file, so that the gain of calibration shows
against the raw and normalised scores, which are not llrs. The metrics are
computed from the score files as written, so ``rerun_metrics`` recomputes the same metrics.json from them alone.
Every labelled score file also gets 95% intervals of its EER and minDCF (``eer_ci95_percent``,
``min_dcf_p<p>_ci95``) from a bootstrap over the list's speakers with a fixed seed (tuneThreshold.py says why
speakers; ``bootstrap`` records the unit, the resamples and the seed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calibration import actual_dcf, cllr
from fileio import atomic_write_text
from scoring import ScoreFile, read_scores
from tuneThreshold import bootstrap_intervals, compute_metrics, trial_clusters

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
BOOTSTRAP_SEED = 0  # fixed: a rerun gives the same intervals
_COMPUTED = ("eer_percent", "eer_threshold", "eer_vt_percent", "dcf_c_miss", "dcf_c_fa", "n_target", "n_nontarget",
             "cllr_bits", "eer_ci95_percent", "bootstrap")
SUB_ENTRIES = ("norm", "cal")  # normalised and calibrated scores of a list


def _finite(obj: Any) -> Any:
    """JSON has no infinity: non-finite floats (e.g. a reject-all threshold) become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def _description(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry without its computed metrics (and without "norm", "cal")."""
    return {k: v for k, v in entry.items()
            if k not in SUB_ENTRIES and k not in _COMPUTED and not k.startswith(("min_dcf_p", "act_dcf_p"))}


def _summary(entry: Mapping[str, Any], p: float) -> str:
    if "eer_percent" not in entry:
        return "unlabeled: no metrics"
    ci = entry.get("eer_ci95_percent")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""
    return (f"EER {entry['eer_percent']:.3f}%{interval} (voxceleb_trainer {entry['eer_vt_percent']:.3f}%), minDCF "
            f"{entry[f'min_dcf_p{float(p)}']:.4f} (p={p:g}), {entry['min_dcf_p0.01']:.4f} (p=0.01); Cllr "
            f"{entry['cllr_bits']:.4f}, actDCF {entry[f'act_dcf_p{float(p)}']:.4f} (p={p:g})")


def _intervals(scores: ScoreFile, p_targets: Sequence[float], c_miss: float, c_fa: float,
               n_resamples: int) -> dict[str, Any]:
    """The metrics.json fields of the bootstrap: eer_ci95_percent, min_dcf_p<p>_ci95, bootstrap."""
    enroll, test, unit = trial_clusters(scores.enroll, scores.test, scores.labels)
    if unit != "speaker":
        log.info("trial names without a speaker folder shared exactly by the target trials: the intervals resample "
                 "files instead of speakers")
    ci = bootstrap_intervals(scores.scores, scores.labels, enroll, test, p_targets, c_miss, c_fa, n_resamples,
                             BOOTSTRAP_SEED)
    out: dict[str, Any] = {"eer_ci95_percent": list(ci.pop("eer_percent"))}
    out.update({f"{key}_ci95": list(v) for key, v in ci.items()})
    out["bootstrap"] = {"unit": unit, "resamples": n_resamples, "seed": BOOTSTRAP_SEED, "interval": "basic"}
    return out


def _with_metrics(entry: Mapping[str, Any], result_dir: Path, p_targets: Sequence[float], c_miss: float,
                  c_fa: float, bootstrap: int) -> dict[str, Any]:
    out = _description(entry)
    scores = read_scores(result_dir / out["scores_file"])
    if scores.labels is not None:
        out.update(compute_metrics(scores.scores, scores.labels, p_targets, c_miss, c_fa))
        out["cllr_bits"] = cllr(scores.scores, scores.labels)
        out.update({f"act_dcf_p{float(p)}": actual_dcf(scores.scores, scores.labels, p, c_miss, c_fa)
                    for p in p_targets})
        if bootstrap > 0:
            out.update(_intervals(scores, p_targets, c_miss, c_fa, bootstrap))
    return out


def metrics_stage(result_dir: Path, entries: Mapping[str, Mapping[str, Any]], checkpoint: str | Path | None,
                  p_targets: Sequence[float], c_miss: float, c_fa: float, p_report: float,
                  bootstrap: int = 1000) -> dict[str, Any]:
    """Metrics of every list (``entries``: name -> description with "scores_file" and optionally "norm") from its
    score files; writes ``<result_dir>/metrics.json`` and returns its content. ``p_report``: the p_target logged;
    ``bootstrap``: resamples behind the 95% intervals (--bootstrap; 0: none)."""
    if bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0 (0: no intervals), got {bootstrap}")
    lists: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        lists[name] = _with_metrics(entry, result_dir, p_targets, c_miss, c_fa, bootstrap)
        log.info("%s: %s", name, _summary(lists[name], p_report))
        for key in SUB_ENTRIES:
            if key in entry:
                lists[name][key] = _with_metrics(entry[key], result_dir, p_targets, c_miss, c_fa, bootstrap)
                log.info("%s, %s: %s", name, entry[key].get("method", key), _summary(lists[name][key], p_report))
    metrics = {**next(iter(lists.values())), "checkpoint": str(checkpoint or "")}
    if len(lists) > 1:
        metrics["lists"] = lists
    atomic_write_text(result_dir / METRICS_FILE, json.dumps(_finite(metrics), indent=2) + "\n")
    return metrics


def read_metrics(result_dir: Path) -> dict[str, Any]:
    return json.loads((Path(result_dir) / METRICS_FILE).read_text())


def entries_of(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> entry of every list of a metrics.json (the top level is the first list)."""
    if "lists" in metrics:
        return dict(metrics["lists"])
    first = {k: v for k, v in metrics.items() if k != "checkpoint"}
    return {Path(first["test_list"]).stem or "list": first}


def rerun_metrics(result_dir: Path, p_targets: Sequence[float], c_miss: float, c_fa: float,
                  p_report: float, bootstrap: int = 1000) -> dict[str, Any]:
    """metrics.json again from the score files it names (e.g. after editing or recalibrating them)."""
    old = read_metrics(result_dir)
    return metrics_stage(Path(result_dir), entries_of(old), old.get("checkpoint"), p_targets, c_miss, c_fa, p_report,
                         bootstrap)
