"""The metrics stage: score files -> ``metrics.json`` (the maths is in tuneThreshold.py).

metrics.json: the first list at the top level, all lists under "lists"; normalised scores under "norm", calibrated ones
under "cal"; unlabeled lists have no metrics. Cllr and actual DCF are reported for every score file, and 95% intervals
of EER and minDCF from a bootstrap over the list's speakers (``eer_ci95_percent``, ``min_dcf_p<p>_ci95``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dtdysv.evaluation.results import (
    EvalRun,
    ListResult,
    ScoreFile,
    ScoreSet,
    entries_of,
    read_metrics,
    read_scores,
    write_metrics,
)
from tuneThreshold import actual_dcf, bootstrap_intervals, cllr, compute_metrics, trial_clusters

log = logging.getLogger(__name__)

_COMPUTED = ("eer_percent", "eer_threshold", "eer_vt_percent", "dcf_c_miss", "dcf_c_fa", "n_target", "n_nontarget",
             "cllr_bits", "eer_ci95_percent", "bootstrap")
BOOTSTRAP_SEED = 0  # fixed: a rerun gives the same intervals
PURPOSE_CALIBRATION = {"purpose": "calibration"}  # marks the --calibration_list: its figures are training figures


def _summary(entry: Mapping[str, Any], p: float) -> str:
    if "eer_percent" not in entry:
        return "unlabeled: no metrics"
    ci = entry.get("eer_ci95_percent")
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""
    return (f"EER {entry['eer_percent']:.3f}%{interval} (voxceleb_trainer {entry['eer_vt_percent']:.3f}%), minDCF "
            f"{entry[f'min_dcf_p{float(p)}']:.4f} (p={p:g}), {entry['min_dcf_p0.01']:.4f} (p=0.01); Cllr "
            f"{entry['cllr_bits']:.4f}, actDCF {entry[f'act_dcf_p{float(p)}']:.4f} (p={p:g})")


def _intervals(scores: ScoreFile, run: EvalRun) -> dict[str, Any]:
    """The metrics.json fields of the bootstrap: eer_ci95_percent, min_dcf_p<p>_ci95, bootstrap."""
    enroll, test, unit = trial_clusters(scores.enroll, scores.test, scores.labels)
    if unit != "speaker":
        log.info("trial names without a speaker folder shared exactly by the target trials: the intervals resample "
                 "files instead of speakers")
    cfg = run.cfg
    ci = bootstrap_intervals(scores.scores, scores.labels, enroll, test, run.p_targets, cfg.dcf_c_miss, cfg.dcf_c_fa,
                             cfg.bootstrap, BOOTSTRAP_SEED)
    out: dict[str, Any] = {"eer_ci95_percent": list(ci.pop("eer_percent"))}
    out.update({f"{key}_ci95": list(v) for key, v in ci.items()})
    out["bootstrap"] = {"unit": unit, "resamples": cfg.bootstrap, "seed": BOOTSTRAP_SEED, "interval": "basic"}
    return out


def _with_metrics(run: EvalRun, scores_set: ScoreSet) -> dict[str, Any]:
    out = scores_set.description()
    scores = read_scores(run.result_dir / scores_set.scores_file)
    if scores.labels is not None:
        cfg = run.cfg
        out.update(compute_metrics(scores.scores, scores.labels, run.p_targets, cfg.dcf_c_miss, cfg.dcf_c_fa))
        out["cllr_bits"] = cllr(scores.scores, scores.labels)
        out.update({f"act_dcf_p{float(p)}": actual_dcf(scores.scores, scores.labels, p, cfg.dcf_c_miss, cfg.dcf_c_fa)
                    for p in run.p_targets})
        if cfg.bootstrap > 0:
            out.update(_intervals(scores, run))
    return out


def metrics_stage(run: EvalRun, lists: list[ListResult]) -> dict[str, Any]:
    """Metrics of every score file of every list; writes metrics.json and returns its content."""
    p_report = run.cfg.dcf_p_target
    entries: dict[str, dict[str, Any]] = {}
    for item in lists:
        entry = _with_metrics(run, item.raw)
        what = f"{item.name} (calibration list: training figures)" if item.calibration else item.name
        log.info("%s: %s", what, _summary(entry, p_report))
        if item.calibration:
            entry.update(PURPOSE_CALIBRATION)
        for key, part in (("norm", item.norm), ("cal", item.cal)):
            if part is not None:
                entry[key] = _with_metrics(run, part)
                log.info("%s, %s: %s", what, part.info.get("method", key), _summary(entry[key], p_report))
        entries[item.name] = entry
    metrics = {**next(iter(entries.values())), "checkpoint": str(run.checkpoint or "")}
    if len(entries) > 1:
        metrics["lists"] = entries
    write_metrics(run.result_dir, metrics)
    return metrics


def _score_set(entry: Mapping[str, Any]) -> ScoreSet:
    """A score file's description in metrics.json without its computed metrics."""
    info = {k: v for k, v in entry.items() if k not in ("norm", "cal", "purpose", "scores_file")
            and k not in _COMPUTED and not k.startswith(("min_dcf_p", "act_dcf_p"))}
    return ScoreSet(entry["scores_file"], info)


def rerun_metrics(run: EvalRun) -> dict[str, Any]:
    """metrics.json again from the score files it names (e.g. after editing or recalibrating them)."""
    old = read_metrics(run.result_dir)
    lists = [ListResult(name, Path(entry["scores_file"]).stem, None, entry.get("purpose") == "calibration",
                        _score_set(entry), *(_score_set(entry[k]) if k in entry else None for k in ("norm", "cal")))
             for name, entry in entries_of(old).items()]
    return metrics_stage(EvalRun(run.cfg, run.result_dir, run.device, old.get("checkpoint") or run.checkpoint), lists)
