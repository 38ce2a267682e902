"""Evaluation as a chain of file-in/file-out stages, each rerunnable alone from the files before it:

    embed      audio + trial lists           -> embeddings.npz               (embed.py)
    cohort     train list (--score_norm)     -> cohort.npz                   (normalise.py)
    score      embeddings.npz + trial lists  -> <list>/scores.txt            (score.py)
    normalise  embeddings.npz + cohort.npz   -> <list>/scores.<norm>.txt     (normalise.py)
    calibrate  score files + embeddings.npz  -> <list>/scores.cal.txt, calibration.json (calibrate.py)
    metrics    score files                   -> <list>/metrics.json          (metrics.py)
    plot       metrics.json + score files    -> <list>/det.png               (plot.py)

Stages share one ``EvalRun`` and pass each list as a ``ListResult``; results.py describes the folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from config import Config
from dtdysv.data.lists import TrialList
from dtdysv.evaluation.calibrate import adopt_settings, calibrate_stage, read_calibration_list
from dtdysv.evaluation.embed import embed_stage
from dtdysv.evaluation.metrics import metrics_stage
from dtdysv.evaluation.normalise import cohort_identity, cohort_stage, norm_stage
from dtdysv.evaluation.plot import plot_stage
from dtdysv.evaluation.results import (
    EvalError,
    EvalRun,
    ListResult,
    ScoreNorm,
    checkpoint_fingerprint,
    differences,
    identity,
    list_results,
    load_npz,
    older_layout,
    weights_fingerprint,
)
from dtdysv.evaluation.score import score_stage
from SpeakerNet import Embedder

log = logging.getLogger(__name__)

def check_eval_options(cfg: Config) -> None:
    """Refuse evaluation options that cannot work together (call once at start-up)."""
    problems = []
    if cfg.eval_frames < 0 or (cfg.eval_frames > 0 and cfg.num_eval < 1):
        problems.append(f"--eval_frames must be >= 0 (0: whole utterances) and --num_eval >= 1, got "
                        f"{cfg.eval_frames} and {cfg.num_eval}")
    if ScoreNorm(cfg.score_norm) == ScoreNorm.ASNORM and cfg.norm_top_n < 2:
        problems.append(f"--norm_top_n must be >= 2 for --score_norm asnorm, got {cfg.norm_top_n}")
    if cfg.bootstrap < 0:
        problems.append(f"--bootstrap must be >= 0 (0: no intervals), got {cfg.bootstrap}")
    if cfg.norm_cohort_utts < 1:
        problems.append(f"--norm_cohort_utts must be >= 1, got {cfg.norm_cohort_utts}")
    if cfg.score_from_cache and not cfg.eval:
        problems.append("--score_from_cache rescores an evaluation: use it with --eval")
    if cfg.calibration_model and not cfg.calibration_list and not Path(cfg.calibration_model).is_file():
        problems.append(f"--calibration_model '{cfg.calibration_model}' does not exist; give --calibration_list "
                        f"<labelled trial list> to train it there")
    if bool(cfg.extract) != bool(cfg.extract_out):
        problems.append("--extract <file list> and --extract_out <file.npz> go together")
    if cfg.extract and cfg.eval:
        problems.append("--extract embeds a file list and stops, so it would skip --eval: run them one at a time")
    if cfg.extract_out and Path(cfg.extract_out).is_dir():
        problems.append(f"--extract_out '{cfg.extract_out}' is a folder; give the .npz file to write")
    if problems:
        raise EvalError("Evaluation options: " + "; ".join(problems) + ".")


def check_trial_lists(trial_lists: list[TrialList]) -> list[TrialList]:
    """Refuse, before any work, a labelled list without both target and non-target trials (no EER or minDCF);
    returns the lists."""
    for trials in trial_lists:
        if trials.labels is not None and len(set(trials.labels.tolist())) < 2:
            kind = "target (1)" if trials.labels.all() else "non-target (0)"
            raise EvalError(f"Trial list '{trials.path}' has only {kind} trials ({len(trials.labels)}); the metrics "
                            f"need both target (1) and non-target (0) trials, or an unlabeled list ('<enroll> "
                            f"<test>' lines: scores without metrics).")
    return trial_lists


def needs_cohort(cfg: Config) -> bool:
    """Whether the cohort stage runs: for --score_norm and for --mean_subtraction (the training-set mean)."""
    return ScoreNorm(cfg.score_norm) != ScoreNorm.NONE or cfg.mean_subtraction


def warn_shared_trials(calibration: TrialList, trial_lists: Sequence[TrialList]) -> None:
    """Warn for every test list sharing trials with the calibration list."""
    pairs = set(zip(calibration.enroll, calibration.test, strict=True))
    for trials in trial_lists:
        shared = sum(pair in pairs for pair in zip(trials.enroll, trials.test, strict=True))
        if shared:
            log.warning("%d of the %d trials of '%s' are trials of --calibration_list '%s': its calibrated figures "
                        "are not those of held-out trials", shared, len(trials.enroll), trials.path, calibration.path)


def score_and_report(run: EvalRun, lists: list[ListResult]) -> dict[str, dict[str, Any]]:
    """Run the stages after the embedding; returns list name -> the content of its metrics.json."""
    if older := older_layout(run.result_dir):
        log.warning("'%s' also holds results of an older version's flat layout (%s), which are left as they were and "
                    "not read: each list's results are in its own folder now", run.result_dir, ", ".join(older[:4]))
    score_stage(run, lists)
    if run.score_norm != ScoreNorm.NONE:
        norm_stage(run, lists)
    held_out = [item.trials for item in lists if not item.calibration]
    for item in lists:
        if item.calibration:
            warn_shared_trials(item.trials, held_out)
    if any(item.calibration for item in lists) or run.cfg.calibration_model:
        calibrate_stage(run, lists)
    metrics = metrics_stage(run, lists)
    plot_stage(run, lists)
    return metrics


def evaluate(embedder: Embedder, trial_lists: list[TrialList], cfg: Config, result_dir: Path, normalize: bool,
             show_progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Embed every list's files once, score and write the results into each list's folder; returns list name (in
    the order of ``trial_lists``, the --calibration_list last) -> the content of its metrics.json. Under DDP rank 0
    scores and writes, the others return {}."""
    cfg = adopt_settings(cfg)
    check_eval_options(cfg)
    run = EvalRun(cfg, Path(result_dir), embedder.device, checkpoint)
    weights = weights_fingerprint(embedder.model.state_dict())
    calibration = read_calibration_list(cfg.calibration_list, cfg.test_path) if cfg.calibration_list else None
    lists = list_results(trial_lists, calibration)
    embed_stage(run, lists, embedder, weights, normalize, show_progress)
    if needs_cohort(cfg):
        cohort_stage(run, embedder, weights, normalize, show_progress)
    if not embedder.env.is_main:
        return {}
    return score_and_report(run, lists)


def score_from_cache(cfg: Config, trial_lists: list[TrialList], result_dir: Path,
                     checkpoint: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``evaluate`` from ``embeddings.npz`` without model or audio (the same return value); EvalError unless the cache
    matches protocol, model settings, files and (if given) ``checkpoint``'s weights."""
    cfg = adopt_settings(cfg)
    check_eval_options(cfg)
    run = EvalRun(cfg, Path(result_dir), torch.device("cpu"), checkpoint)
    path = run.embeddings_file
    found = load_npz(path)
    if found is None:
        raise EvalError(f"--score_from_cache: there is no embedding cache '{path}'; run --eval without "
                        f"--score_from_cache first (it writes the cache).")
    meta, arrays = found
    problems = differences(meta, identity(cfg, None))
    if checkpoint and not problems and checkpoint_fingerprint(checkpoint, cfg) != meta.get("weights"):
        problems.append(f"weights: the cache was made from {meta.get('checkpoint') or 'other weights'!r}, whose "
                        f"weights differ from those in '{checkpoint}'")
    names = set(arrays["names"].tolist())
    calibration = (read_calibration_list(cfg.calibration_list, cfg.test_path, check_files=False)
                   if cfg.calibration_list else None)
    lists = list_results(trial_lists, calibration)
    missing = [f for f in dict.fromkeys(f for item in lists for f in item.trials.files) if f not in names]
    if missing:
        problems.append(f"{len(missing)} files of the trial lists are not in it, e.g. '{missing[0]}'")
    if needs_cohort(cfg) and not problems:
        found_cohort = load_npz(run.cohort_file)
        if found_cohort is None:
            why = f"--score_norm {cfg.score_norm}" if run.score_norm != ScoreNorm.NONE else "--mean_subtraction"
            problems.append(f"{why} needs the cohort cache '{run.cohort_file}', which does not exist")
        elif cohort_problems := differences(found_cohort[0], cohort_identity(cfg, meta.get("weights"),
                                                                             meta.get("test_normalize"))):
            problems.append("the cohort cache does not fit (" + "; ".join(cohort_problems) + ")")
    if problems:
        raise EvalError(f"The embedding cache '{path}' cannot be used: " + "; ".join(problems) + ". Run --eval "
                        "without --score_from_cache to embed again.")
    log.info("scoring from the cached embeddings in '%s' (%d files, checkpoint %s)", path, len(names),
             meta.get("checkpoint") or "not recorded")
    if meta.get("test_path") != str(Path(cfg.test_path).resolve()):
        log.warning("the cached embeddings are of the files under '%s'; --test_path is '%s' (not read: the list's "
                    "names are matched as they are)", meta.get("test_path"), cfg.test_path)
    return score_and_report(EvalRun(cfg, run.result_dir, run.device, meta.get("checkpoint") or checkpoint), lists)
