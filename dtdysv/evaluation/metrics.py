"""The metrics stage: a list's score files -> its ``metrics.json`` (the maths is in tuneThreshold.py).

A list's metrics.json: its name, ``test_list``, ``role`` (a --calibration_list's figures are training figures, not
held-out ones), the ``checkpoint``, the source of its scores (``weights`` fingerprint, ``embeddings`` settings),
``trials_sha1``, and under ``variants`` one entry per score file (raw, asnorm, snorm, cal): its description and
figures. Unlabeled lists have no figures. Cllr and actual DCF are reported for every score file, and 95% intervals of
EER and minDCF from a bootstrap over the list's speakers (``eer_ci95_percent``, ``min_dcf_p<p>_ci95``). A variant
that this evaluation does not recompute is kept from the folder's earlier metrics.json while it has the same source,
trials and role, and removed (its score file too) otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from dtdysv.evaluation.results import (
    METRICS_FILE,
    RAW,
    ROLE_CALIBRATION,
    VARIANTS,
    EvalError,
    EvalRun,
    ListResult,
    ScoreFile,
    ScoreSet,
    read_list_metrics,
    read_scores,
    require_lists,
    trials_digest,
    variant_file,
    write_metrics,
)
from tuneThreshold import actual_dcf, bootstrap_intervals, cllr, compute_metrics, trial_clusters

log = logging.getLogger(__name__)

_COMPUTED = ("eer_percent", "eer_threshold", "eer_vt_percent", "dcf_c_miss", "dcf_c_fa", "n_target", "n_nontarget",
             "cllr_bits", "eer_ci95_percent", "bootstrap")
BOOTSTRAP_SEED = 0  # fixed: a rerun gives the same intervals


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


def _with_metrics(run: EvalRun, folder: Path, scores_set: ScoreSet) -> dict[str, Any]:
    out = scores_set.description()
    scores = read_scores(folder / scores_set.scores_file)
    if scores.labels is not None:
        cfg = run.cfg
        out.update(compute_metrics(scores.scores, scores.labels, run.p_targets, cfg.dcf_c_miss, cfg.dcf_c_fa))
        out["cllr_bits"] = cllr(scores.scores, scores.labels)
        out.update({f"act_dcf_p{float(p)}": actual_dcf(scores.scores, scores.labels, p, cfg.dcf_c_miss, cfg.dcf_c_fa)
                    for p in run.p_targets})
        if cfg.bootstrap > 0:
            out.update(_intervals(scores, run))
    return out


def _header(run: EvalRun, item: ListResult) -> dict[str, Any]:
    """What a list's metrics.json says of the list and of what its scores come from."""
    return {"list": item.name, "test_list": item.trials.path if item.trials else "", "role": item.role,
            "checkpoint": str(run.checkpoint or ""), **item.source,
            "trials_sha1": trials_digest(item.trials) if item.trials else None}


def earlier_variants(folder: Path, header: Mapping[str, Any], produced: Collection[str]) -> dict[str, dict[str, Any]]:
    """The entries of ``folder``'s metrics.json for variants not in ``produced``, if they have the source, trials and
    role of ``header``; otherwise their score files are removed and nothing is kept."""
    if not (folder / METRICS_FILE).is_file():
        return {}
    try:
        old = read_list_metrics(folder)
    except EvalError as err:
        log.warning("%s It is written again.", err)
        return {}
    others = {key: entry for key, entry in old["variants"].items() if key not in produced}
    changed = [what for key, what in (("weights", "other weights"), ("embeddings", "other embedding settings"),
                                      ("trials_sha1", "other trials"), ("role", "another role"))
               if old.get(key) != header.get(key)]
    if not changed:
        return others
    if not others:
        return {}
    for variant in others:
        (folder / variant_file(variant)).unlink(missing_ok=True)
    log.info("%s: removed the earlier %s scores and figures, which were of %s (checkpoint '%s')", folder,
             ", ".join(others), " and ".join(changed), old.get("checkpoint", ""))
    return {}


def list_metrics(run: EvalRun, name: str, header: Mapping[str, Any], parts: Mapping[str, ScoreSet]) -> dict[str, Any]:
    """Metrics of a list's variants ``parts`` beside those kept from its earlier metrics.json; writes that file and
    returns its content. ``header``: the list's description (``_header``)."""
    folder = run.list_dir(name)
    variants = earlier_variants(folder, header, parts)
    what = f"{name} ({ROLE_CALIBRATION})" if header["role"] == ROLE_CALIBRATION else name
    for variant, part in parts.items():
        variants[variant] = _with_metrics(run, folder, part)
        log.info("%s%s: %s", what, "" if variant == RAW else f", {variant}",
                 _summary(variants[variant], run.cfg.dcf_p_target))
    order = {variant: i for i, variant in enumerate(VARIANTS)}
    metrics = {**header, "variants": dict(sorted(variants.items(), key=lambda kv: order.get(kv[0], len(order))))}
    return write_metrics(folder, metrics)


def metrics_stage(run: EvalRun, lists: list[ListResult]) -> dict[str, dict[str, Any]]:
    """Metrics of every list into its folder's metrics.json; returns name -> that file's content."""
    return {item.name: list_metrics(run, item.name, _header(run, item), item.variants()) for item in lists}


def _score_set(variant: str, entry: Mapping[str, Any]) -> ScoreSet:
    """A score file's description in metrics.json without its computed metrics."""
    info = {k: v for k, v in entry.items() if k != "scores_file"
            and k not in _COMPUTED and not k.startswith(("min_dcf_p", "act_dcf_p"))}
    return ScoreSet(variant, info)


def rerun_metrics(run: EvalRun, names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every list's metrics.json (or those of ``names``) again from the score files it names (e.g. after editing or
    recalibrating them); returns name -> its content."""
    folders = require_lists(run.result_dir)
    missing = [name for name in names or () if name not in folders]
    if missing:
        raise EvalError(f"'{run.result_dir}' has no list '{missing[0]}'; its lists: {', '.join(folders) or 'none'}.")
    out = {}
    for name in names or list(folders):
        old = read_list_metrics(folders[name])
        header = {k: v for k, v in old.items() if k != "variants"}
        parts = {variant: _score_set(variant, entry) for variant, entry in old["variants"].items()}
        rerun = EvalRun(run.cfg, run.result_dir, run.device, header.get("checkpoint") or run.checkpoint)
        out[name] = list_metrics(rerun, name, header, parts)
    return out
