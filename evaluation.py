"""Evaluation back end: embed each file once (cached), score every trial list, metrics, DET curve, score norm.

Protocols, named in every result:
- ``paper`` (``eval_frames`` > 0): ``num_eval`` evenly spaced crops of ``eval_frames`` frames per file; crop
  embeddings L2-normalised when the loss says so (``test_normalize``); trial score = minus the mean Euclidean
  distance over the num_eval x num_eval crop pairs (DTDY-CNN, arXiv 2203.15277; voxceleb_trainer).
- ``whole`` (``eval_frames`` 0): one embedding per whole utterance, cosine score. Only files of exactly equal length
  are batched together (no padding, no cropping), so every embedding is that of the file alone.

Score normalisation (``--score_norm asnorm|snorm``, reported beside the raw scores): the cohort is one vector per
training speaker (``--train_list``): the mean of the L2-normalised crop-mean embeddings of ``norm_cohort_utts``
utterances spread over its list entries. Cohort scores are cosines, so the score that is normalised is the cosine
of the L2-normalised crop-mean embeddings of the two files: for ``whole`` that is the raw score itself; for
``paper`` it is not the (distance) raw score but its cosine counterpart, and metrics.json says so ("score").
AS-norm: 0.5 ((s - mu_e) / sd_e + (s - mu_t) / sd_t), mu and sd over each file's ``norm_top_n`` highest cohort
scores; S-norm: over the whole cohort.

Files in the result folder (``<save_path>/result``):
  scores.txt, scores_<stem>.txt    'score label enroll test' for the first / every further list (no label column
                                   for an unlabeled list); normalised: scores.<norm>.txt, scores_<stem>.<norm>.txt
  metrics.json                     the first list's metrics at the top level; with several lists also
                                   "lists": {name: metrics}; unlabeled lists get scores and no metrics
  det.png                          DET curves (normal-deviate axes) with the EER and minDCF points
  embeddings.npz, cohort.npz       caches: 'names', 'embeddings' (float32, as the model outputs them) and 'meta'
                                   (JSON: protocol, checkpoint, weights fingerprint, model settings)

``score_from_cache`` rescoring needs neither the model nor the audio (``python trainSpeakerNet.py --eval
--score_from_cache``); a cache made with other weights or settings is rebuilt by ``evaluate`` and refused by
``score_from_cache``, with a message saying why. ``run_extract`` writes the embeddings of any file list to a .npz.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import checkpoint as ckpt
from audio import crop_samples
from config import MODEL_KEYS, Config, UserError
from DatasetLoader import DataError, TestDataset, TrialList, read_train_list
from scoring import cohort_statistics, norm_with_statistics, score_trial_list
from SpeakerNet import ModelTrainer
from tuneThreshold import compute_metrics, det_curve, rates_at

log = logging.getLogger(__name__)

CROPS_PER_BATCH = 64  # paper protocol: test crops embedded together
WHOLE_BATCH_SAMPLES = CROPS_PER_BATCH * crop_samples(400)  # whole utterances: samples per batch at most
CACHE_FILE, COHORT_FILE = "embeddings.npz", "cohort.npz"
CACHE_FORMAT = "dtdy-sv-embeddings"
NORMS = ("asnorm", "snorm")
NORM_SCORE = "cosine of the L2-normalised crop-mean embeddings"


class EvalError(UserError):
    pass


def check_eval_options(cfg: Config) -> None:
    """Refuse evaluation options that cannot work together (call once at start-up)."""
    problems = []
    if cfg.eval_frames < 0 or (cfg.eval_frames > 0 and cfg.num_eval < 1):
        problems.append(f"--eval_frames must be >= 0 (0: whole utterances) and --num_eval >= 1, got "
                        f"{cfg.eval_frames} and {cfg.num_eval}")
    if cfg.score_norm == "asnorm" and cfg.norm_top_n < 2:
        problems.append(f"--norm_top_n must be >= 2 for --score_norm asnorm, got {cfg.norm_top_n}")
    if cfg.norm_cohort_utts < 1:
        problems.append(f"--norm_cohort_utts must be >= 1, got {cfg.norm_cohort_utts}")
    if cfg.score_from_cache and not cfg.eval:
        problems.append("--score_from_cache rescores an evaluation: use it with --eval")
    if bool(cfg.extract) != bool(cfg.extract_out):
        problems.append("--extract <file list> and --extract_out <file.npz> go together")
    if problems:
        raise EvalError("Evaluation options: " + "; ".join(problems) + ".")


def protocol_of(cfg: Config) -> dict[str, Any]:
    """The embedding protocol as recorded in results and caches: name, scoring, crops, description."""
    if cfg.eval_frames > 0:
        return {"name": "paper", "scoring": "paper", "eval_frames": cfg.eval_frames, "num_eval": cfg.num_eval,
                "detail": f"{cfg.num_eval} crops of {cfg.eval_frames} frames per file, score = -mean Euclidean "
                          f"distance over the {cfg.num_eval}x{cfg.num_eval} crop pairs"}
    return {"name": "whole", "scoring": "cosine", "eval_frames": 0, "num_eval": 1,
            "detail": "whole utterances, cosine score"}


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-1 of a model state dict (names, shapes and values), whatever device it lives on."""
    digest = hashlib.sha1()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.float()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | Path, cfg: Config) -> str:
    """``weights_fingerprint`` of the model weights in a checkpoint file (ours or the official format)."""
    obj = ckpt.read(path)
    if obj.get("format") == ckpt.FORMAT:
        return weights_fingerprint(obj["model"])
    import plugins  # only an official checkpoint needs the model's parameter names

    model_sd, _, _ = ckpt.split_weights(obj, path, plugins.build("model", cfg.model, cfg).state_dict())
    return weights_fingerprint(model_sd)


def _identity(cfg: Config, weights: str | None) -> dict[str, Any]:
    """What a cache must agree on to be reused."""
    proto = protocol_of(cfg)
    return {"format": CACHE_FORMAT, "version": 1, "protocol": proto["name"], "eval_frames": proto["eval_frames"],
            "num_eval": proto["num_eval"], "model": {k: getattr(cfg, k) for k in MODEL_KEYS}, "weights": weights}


def _differences(meta: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    return [f"{key}: cached {meta.get(key)!r}, now {value!r}" for key, value in expected.items()
            if value is not None and meta.get(key) != value]


# ---- files ------------------------------------------------------------------------------------------------------


def _save_npz(path: Path, meta: Mapping[str, Any], **arrays: np.ndarray) -> None:
    """np.savez (uncompressed) to a temporary file, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, arrays) of a cache or --extract file; None if absent or unreadable (logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except (OSError, ValueError, KeyError) as err:
        log.warning("cannot read '%s' (%s); ignoring it", path, err)
        return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_scores(path: Path, scores: np.ndarray, trials: TrialList) -> None:
    """One line per trial: 'score label enroll test' (no label column for an unlabeled list)."""
    if trials.labels is None:
        lines = [f"{s:.6f} {e} {t}" for s, e, t in zip(scores, trials.enroll, trials.test, strict=True)]
    else:
        lines = [f"{s:.6f} {lab} {e} {t}"
                 for s, lab, e, t in zip(scores, trials.labels, trials.enroll, trials.test, strict=True)]
    _atomic_write(path, "\n".join(lines) + "\n")


def list_names(trial_lists: Sequence[TrialList]) -> list[str]:
    """A distinct name per list: the file stem, with _2, _3 ... for repeats."""
    names: list[str] = []
    for trials in trial_lists:
        base = Path(trials.path).stem or "list"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def read_file_list(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Files of an --extract list: '<path>' lines, or '<label> <path>' lines (a train list); duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"File list '{path}' (--extract) does not exist.")
    rows = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    ncols = len(rows[0][1]) if rows else 0
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows if len(t) != ncols]
    if not rows or ncols not in (1, 2) or bad:
        raise EvalError(f"File list '{path}' (--extract) must have '<path>' or '<label> <path>' lines (paths under "
                        f"--test_path), the same on every line; bad: {', '.join(bad[:5]) or 'the first line'}.")
    first: dict[str, str] = {}
    for _, t in rows:
        first.setdefault(t[-1], t[0])
    return list(first), (list(first.values()) if ncols == 2 else None)


# ---- embedding --------------------------------------------------------------------------------------------------


def _model_of(trainer: ModelTrainer) -> nn.Module:
    return getattr(trainer.net, "module", trainer.net).model  # DDP keeps the SpeakerNet in .module


def _is_main(trainer: ModelTrainer) -> bool:
    """Under DDP every rank embeds (its share) and scores; only rank 0 writes files."""
    return bool(getattr(getattr(trainer, "env", None), "is_main", True))


def _equal_length_batches(files: Sequence[str], root: str | Path) -> list[list[int]]:
    """Indices of files with the same length (and rate), in batches of at most WHOLE_BATCH_SAMPLES samples."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, name in enumerate(files):
        try:
            info = soundfile.info(str(Path(root) / name))
        except (RuntimeError, soundfile.LibsndfileError) as err:
            raise DataError(f"Cannot decode audio file '{Path(root) / name}': {err}") from None
        groups.setdefault((info.frames, info.samplerate), []).append(i)
    batches = []
    for (length, _), members in sorted(groups.items()):
        size = max(1, WHOLE_BATCH_SAMPLES // max(length, 1))
        batches += [members[j:j + size] for j in range(0, len(members), size)]
    return batches


def embed_files(trainer: ModelTrainer, files: Sequence[str], root: str | Path, cfg: Config,
                show_progress: bool = True, what: str = "files") -> torch.Tensor:
    """Embeddings of ``files`` (paths under ``root``) by the configured protocol: (F, C, nOut) float32 on CPU,
    C = num_eval crops (paper) or 1 (whole), exactly as the model outputs them (not normalised)."""
    dataset = TestDataset(files, root, cfg.eval_frames, cfg.num_eval, resample=cfg.resample)
    pin = trainer.device.type == "cuda"
    if cfg.eval_frames > 0:
        loader = DataLoader(dataset, batch_size=max(1, CROPS_PER_BATCH // cfg.num_eval), shuffle=False,
                            num_workers=cfg.nDataLoaderThread, pin_memory=pin)
    else:
        loader = DataLoader(dataset, batch_sampler=_equal_length_batches(files, root),
                            num_workers=cfg.nDataLoaderThread, pin_memory=pin)
    start = time.perf_counter()
    embeddings = torch.stack(trainer.embed(loader, len(files), show_progress))
    seconds = time.perf_counter() - start
    log.info("embedded %d %s (%s protocol) in %.1f s, %.1f files/s", len(files), what, protocol_of(cfg)["name"],
             seconds, len(files) / max(seconds, 1e-9))
    return embeddings


def cached_embeddings(trainer: ModelTrainer, files: Sequence[str], cfg: Config, path: Path, weights: str,
                      normalize: bool, checkpoint: str | Path | None = None,
                      show_progress: bool = True) -> tuple[dict[str, int], torch.Tensor]:
    """(file -> row, (rows, C, nOut)) for ``files``: rows of a matching cache are reused, the others embedded, and
    the cache (the union) rewritten. A cache of other weights, protocol, model or test_path is rebuilt."""
    expected = {**_identity(cfg, weights), "test_path": str(Path(cfg.test_path).resolve())}
    names: list[str] = []
    table: torch.Tensor | None = None
    meta: dict[str, Any] = {}
    found = load_npz(path)
    if found is not None:
        problems = _differences(found[0], expected)
        if problems:
            log.info("embedding cache '%s' does not fit (%s): embedding again", path, "; ".join(problems))
        else:
            meta, names, table = found[0], found[1]["names"].tolist(), torch.from_numpy(found[1]["embeddings"])
    index = {name: i for i, name in enumerate(names)}
    missing = [f for f in files if f not in index]
    if missing:
        new = embed_files(trainer, missing, cfg.test_path, cfg, show_progress, "test files")
        table = new if table is None else torch.cat([table, new])
        index.update({name: len(names) + i for i, name in enumerate(missing)})
        names += missing
    else:
        log.info("reusing the cached embeddings of all %d files from '%s'", len(files), path)
    stale_meta = meta.get("test_normalize") != normalize or (checkpoint and meta.get("checkpoint") != str(checkpoint))
    if _is_main(trainer) and (missing or stale_meta):
        meta = {**expected, "checkpoint": str(checkpoint or meta.get("checkpoint", "")), "test_normalize": normalize,
                "n_files": len(names)}
        _save_npz(path, meta, names=np.array(names), embeddings=table.numpy())
    return index, table


def _file_vectors(table: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(F, C, D) crop embeddings -> (F, D) unit vectors: L2-normalised (if ``normalize``) crops, mean, normalised."""
    crops = F.normalize(table, dim=-1) if normalize else table
    return F.normalize(crops.mean(1), dim=-1)


def cohort_embeddings(trainer: ModelTrainer, cfg: Config, path: Path, weights: str, normalize: bool,
                      show_progress: bool = True) -> torch.Tensor:
    """(M, nOut) speaker vectors of the cohort (see the module docstring), cached in ``path``."""
    train_list = Path(cfg.train_list)
    stat = train_list.stat() if train_list.is_file() else None
    expected = {**_identity(cfg, weights), "train_list": str(train_list.resolve()),
                "train_list_stat": [stat.st_size, stat.st_mtime_ns] if stat else None,
                "train_path": str(Path(cfg.train_path).resolve()), "norm_cohort_utts": cfg.norm_cohort_utts,
                "test_normalize": normalize}
    found = load_npz(path)
    if found is not None:
        problems = _differences(found[0], expected)
        if not problems:
            log.info("reusing the cached cohort of %d speakers from '%s'", found[1]["embeddings"].shape[0], path)
            return torch.from_numpy(found[1]["embeddings"])
        log.info("cohort cache '%s' does not fit (%s): embedding again", path, "; ".join(problems))
    train = read_train_list(cfg.train_list, cfg.train_path)
    order = np.argsort(train.labels, kind="stable")  # list order within each speaker
    bounds = np.searchsorted(train.labels[order], np.arange(len(train.speakers) + 1))
    chosen, owner = [], []
    for spk in range(len(train.speakers)):
        members = order[bounds[spk]:bounds[spk + 1]]
        picks = np.unique(np.linspace(0, len(members) - 1, min(cfg.norm_cohort_utts, len(members))).round())
        chosen += [train.files[i] for i in members[picks.astype(np.int64)]]
        owner += [spk] * len(picks)
    vectors = _file_vectors(embed_files(trainer, chosen, "", cfg, show_progress, "cohort files"), normalize)
    owner_t = torch.tensor(owner)
    cohort = torch.zeros(len(train.speakers), vectors.shape[1]).index_add_(0, owner_t, vectors)
    cohort /= torch.bincount(owner_t, minlength=len(train.speakers)).unsqueeze(1)
    if _is_main(trainer):
        _save_npz(path, {**expected, "n_speakers": len(train.speakers)}, names=np.array(train.speakers),
                  embeddings=cohort.numpy())
    return cohort


# ---- scoring and results ----------------------------------------------------------------------------------------


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``n`` points of a curve, evenly spaced along its length (for plotting 10^7-point curves)."""
    if x.size <= n:
        return x, y
    length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    keep = np.union1d(np.searchsorted(length, np.linspace(0.0, length[-1], n)).clip(0, x.size - 1), [0, x.size - 1])
    return x[keep], y[keep]


def plot_det(curves: Sequence[tuple[str, np.ndarray, np.ndarray, Mapping[str, Any], str]], path: Path,
             p_targets: Sequence[float]) -> None:
    """DET curves (FNR against FPR on normal-deviate axes) to a PNG, with the EER (circle) and minDCF points.

    curves: (label, scores (N,), labels (N,), metrics of compute_metrics, line style) per curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.special import ndtri

    n_min = min(min(m["n_target"], m["n_nontarget"]) for *_, m, _ in curves)
    lo = max(1e-4, 0.5 / n_min)
    hi = 0.6 if max(m["eer_percent"] for *_, m, _ in curves) < 30 else 0.99

    def probit(rate: Any) -> np.ndarray:
        return ndtri(np.clip(rate, lo, hi))

    fig = Figure(figsize=(6.4, 6.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = dict(zip(p_targets, "s^Dv<>", strict=False))
    for label, scores, labels, m, style in curves:
        fpr, fnr = det_curve(scores, labels)
        (line,) = ax.plot(*_thin(probit(fpr), probit(fnr), 5000), style, lw=1.5,
                          label=f"{label}: EER {m['eer_percent']:.2f}%")
        eer = probit(m["eer_percent"] / 100)
        ax.plot(eer, eer, "o", color=line.get_color(), mfc="none", ms=8)
        p_fpr, p_fnr = rates_at(scores, labels, [m[f"min_dcf_p{float(p)}_threshold"] for p in p_targets])
        for p, a, b in zip(p_targets, p_fpr, p_fnr, strict=True):
            ax.plot(probit(a), probit(b), markers[p], color=line.get_color(), mfc="none", ms=8)
    ax.plot([], [], "ko", mfc="none", label="EER")
    for p in p_targets:
        ax.plot([], [], "k" + markers[p], mfc="none", label=f"minDCF, p_target {p:g}")
    ticks = [t for t in (0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 95) if lo <= t / 100 <= hi]
    positions = ndtri(np.array(ticks) / 100)
    ax.set_xticks(positions, [f"{t:g}" for t in ticks])
    ax.set_yticks(positions, [f"{t:g}" for t in ticks])
    ax.set_xlim(probit(lo), probit(hi))
    ax.set_ylim(probit(lo), probit(hi))
    ax.plot([probit(lo), probit(hi)], [probit(lo), probit(hi)], ":", color="0.6", lw=1)  # FNR = FPR
    ax.set_xlabel("False acceptance rate (%)")
    ax.set_ylabel("False rejection rate (%)")
    ax.set_title("DET curve")
    ax.grid(True, color="0.9")
    ax.legend(loc="lower left", fontsize="small")
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def _finite(obj: Any) -> Any:
    """JSON has no infinity: non-finite floats (e.g. a reject-all threshold) become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def _summary(entry: Mapping[str, Any], p: float) -> str:
    if "eer_percent" not in entry:
        return "unlabeled: no metrics"
    return (f"EER {entry['eer_percent']:.3f}% (voxceleb_trainer {entry['eer_vt_percent']:.3f}%), minDCF "
            f"{entry[f'min_dcf_p{float(p)}']:.4f} (p={p:g}), {entry['min_dcf_p0.01']:.4f} (p=0.01)")


def score_and_report(index: Mapping[str, int], table: torch.Tensor, trial_lists: Sequence[TrialList], cfg: Config,
                     result_dir: Path, normalize: bool, cohort: torch.Tensor | None,
                     checkpoint: str | Path | None, device: torch.device, write: bool = True) -> dict[str, Any]:
    """Score every list from the embeddings ``table`` (rows by ``index``); with ``write``, write the score files,
    metrics.json and det.png."""
    proto = protocol_of(cfg)
    stacked = table.to(device)
    crops = F.normalize(stacked, dim=-1) if normalize else stacked
    batch = 256 if device.type == "cpu" else 4096
    p_targets = tuple(sorted({0.01, 0.05, float(cfg.dcf_p_target)}))
    norm_info: dict[str, Any] = {}
    if cohort is not None:
        top_n = cohort.shape[0] if cfg.score_norm == "snorm" else cfg.norm_top_n
        if not 2 <= top_n <= cohort.shape[0]:
            raise EvalError(f"--norm_top_n {top_n} needs a cohort of at least that many (and 2) speakers; "
                            f"--train_list '{cfg.train_list}' has {cohort.shape[0]}. Lower --norm_top_n, or use "
                            f"--score_norm snorm (the whole cohort).")
        vectors = _file_vectors(stacked, normalize)  # (F, D)
        mean, std = cohort_statistics(vectors, cohort.to(device), top_n)
        norm_info = {"method": cfg.score_norm, "score": NORM_SCORE, "top_n": top_n,
                     "cohort_speakers": cohort.shape[0], "cohort_utts_per_speaker": cfg.norm_cohort_utts}
    entries: dict[str, dict[str, Any]] = {}
    curves = []
    for i, (trials, name) in enumerate(zip(trial_lists, list_names(trial_lists), strict=True)):
        stem = "scores" if i == 0 else f"scores_{name}"
        pairs = list(zip(trials.enroll, trials.test, strict=True))
        start = time.perf_counter()
        scores = score_trial_list((index, crops), pairs, proto["scoring"], batch_size=batch)
        seconds = time.perf_counter() - start
        if not np.isfinite(scores).all():
            raise EvalError(f"{int((~np.isfinite(scores)).sum())} of {len(scores)} scores of '{trials.path}' are not "
                            f"finite: the model's embeddings contain NaN or inf (diverged or corrupt weights?).")
        if write:
            write_scores(result_dir / f"{stem}.txt", scores, trials)
        entry: dict[str, Any] = {"test_list": trials.path, "protocol": proto["name"],
                                 "protocol_detail": proto["detail"], "n_files": len(trials.files),
                                 "n_trials": len(scores), "scores_file": f"{stem}.txt"}
        if trials.labels is not None:
            entry.update(compute_metrics(scores, trials.labels, p_targets, cfg.dcf_c_miss, cfg.dcf_c_fa))
            curves.append((name, scores, trials.labels, entry, "-"))
        log.info("%s: %d trials scored in %.2f s -> %s; %s", name, len(scores), seconds, result_dir / f"{stem}.txt",
                 _summary(entry, cfg.dcf_p_target))
        if norm_info:
            cosine = torch.from_numpy(score_trial_list((index, vectors), pairs, "cosine", batch_size=batch))
            rows = [torch.tensor([index[f] for f in side], dtype=torch.long, device=device)
                    for side in (trials.enroll, trials.test)]
            normed = norm_with_statistics(cosine.to(device), mean, std, *rows).cpu().numpy()
            sub = {**norm_info, "scores_file": f"{stem}.{cfg.score_norm}.txt"}
            if write:
                write_scores(result_dir / sub["scores_file"], normed, trials)
            if trials.labels is not None:
                sub.update(compute_metrics(normed, trials.labels, p_targets, cfg.dcf_c_miss, cfg.dcf_c_fa))
                curves.append((f"{name} {cfg.score_norm}", normed, trials.labels, sub, "--"))
            log.info("%s, %s: %s", name, cfg.score_norm, _summary(sub, cfg.dcf_p_target))
            entry["norm"] = sub
        entries[name] = entry
    if curves and write:
        plot_det(curves, result_dir / "det.png", p_targets)
    metrics = {**next(iter(entries.values())), "checkpoint": str(checkpoint or "")}
    if len(entries) > 1:
        metrics["lists"] = entries
    if write:
        _atomic_write(result_dir / "metrics.json", json.dumps(_finite(metrics), indent=2) + "\n")
    return metrics


# ---- entry points -----------------------------------------------------------------------------------------------


def evaluate(trainer: ModelTrainer, trial_lists: list[TrialList], cfg: Config, result_dir: Path, loss: nn.Module,
             show_progress: bool = True, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Embed the files of every list once (reusing the cache), score, and write the results; returns the first
    list's metrics (with "lists" for several). ``checkpoint``: the weights' file, recorded in the results."""
    check_eval_options(cfg)
    result_dir = Path(result_dir)
    weights = weights_fingerprint(_model_of(trainer).state_dict())
    normalize = bool(getattr(loss, "test_normalize", True))
    files = list(dict.fromkeys(f for trials in trial_lists for f in trials.files))
    index, table = cached_embeddings(trainer, files, cfg, result_dir / CACHE_FILE, weights, normalize, checkpoint,
                                     show_progress)
    cohort = None
    if cfg.score_norm != "none":
        cohort = cohort_embeddings(trainer, cfg, result_dir / COHORT_FILE, weights, normalize, show_progress)
    return score_and_report(index, table, trial_lists, cfg, result_dir, normalize, cohort, checkpoint,
                            trainer.device, write=_is_main(trainer))


def score_from_cache(cfg: Config, trial_lists: list[TrialList], result_dir: Path,
                     checkpoint: str | Path | None = None) -> dict[str, Any]:
    """``evaluate`` without the model or the audio, from ``<result_dir>/embeddings.npz`` (and cohort.npz).

    The cache must match the protocol and model settings, hold every file of the lists and, when ``checkpoint``
    is given (the weights the user means to evaluate), come from the same weights; else EvalError says why.
    """
    check_eval_options(cfg)
    result_dir = Path(result_dir)
    path = result_dir / CACHE_FILE
    found = load_npz(path)
    if found is None:
        raise EvalError(f"--score_from_cache: there is no embedding cache '{path}'; run --eval without "
                        f"--score_from_cache first (it writes the cache).")
    meta, arrays = found
    problems = _differences(meta, _identity(cfg, None))
    if checkpoint and not problems and checkpoint_fingerprint(checkpoint, cfg) != meta.get("weights"):
        problems.append(f"weights: the cache was made from {meta.get('checkpoint') or 'other weights'!r}, whose "
                        f"weights differ from those in '{checkpoint}'")
    names = arrays["names"].tolist()
    index = {name: i for i, name in enumerate(names)}
    missing = [f for f in dict.fromkeys(f for trials in trial_lists for f in trials.files) if f not in index]
    if missing:
        problems.append(f"{len(missing)} files of the trial lists are not in it, e.g. '{missing[0]}'")
    cohort = None
    if cfg.score_norm != "none" and not problems:
        found_cohort = load_npz(result_dir / COHORT_FILE)
        expected = {**_identity(cfg, meta.get("weights")), "norm_cohort_utts": cfg.norm_cohort_utts,
                    "train_list": str(Path(cfg.train_list).resolve()), "test_normalize": meta.get("test_normalize")}
        if found_cohort is None:
            problems.append(f"--score_norm {cfg.score_norm} needs the cohort cache '{result_dir / COHORT_FILE}', "
                            f"which does not exist")
        elif cohort_problems := _differences(found_cohort[0], expected):
            problems.append("the cohort cache does not fit (" + "; ".join(cohort_problems) + ")")
        else:
            cohort = torch.from_numpy(found_cohort[1]["embeddings"])
    if problems:
        raise EvalError(f"The embedding cache '{path}' cannot be used: " + "; ".join(problems) + ". Run --eval "
                        "without --score_from_cache to embed again.")
    log.info("scoring from the cached embeddings in '%s' (%d files, checkpoint %s)", path, len(names),
             meta.get("checkpoint") or "not recorded")
    if meta.get("test_path") != str(Path(cfg.test_path).resolve()):
        log.warning("the cached embeddings are of the files under '%s'; --test_path is '%s' (not read: the list's "
                    "names are matched as they are)", meta.get("test_path"), cfg.test_path)
    return score_and_report(index, torch.from_numpy(arrays["embeddings"]), trial_lists, cfg, result_dir,
                            bool(meta.get("test_normalize", True)), cohort, meta.get("checkpoint") or checkpoint,
                            torch.device("cpu"))


def run_extract(cfg: Config, trainer: ModelTrainer, checkpoint: str | Path | None = None,
                show_progress: bool = True) -> Path:
    """Embed every file of ``--extract`` (under --test_path) and write ``--extract_out``: arrays 'names' (N,),
    'embeddings' float32 (N, nOut) for whole utterances or (N, num_eval, nOut) for the paper protocol (as the
    model outputs them, not normalised), 'labels' (N,) for '<label> <path>' lists, and 'meta' (JSON)."""
    check_eval_options(cfg)
    if not cfg.extract:
        raise EvalError("Embedding extraction needs --extract <file list> and --extract_out <file.npz>.")
    files, labels = read_file_list(cfg.extract)
    absent = [f for f in files if not (Path(cfg.test_path) / f).is_file()]
    if absent:
        raise EvalError(f"{len(absent)} files of --extract '{cfg.extract}' do not exist under --test_path "
                        f"'{cfg.test_path}', e.g. '{absent[0]}'.")
    embeddings = embed_files(trainer, files, cfg.test_path, cfg, show_progress)
    proto = protocol_of(cfg)
    arrays = {"names": np.array(files),
              "embeddings": (embeddings[:, 0] if proto["name"] == "whole" else embeddings).numpy()}
    if labels is not None:
        arrays["labels"] = np.array(labels)
    meta = {**_identity(cfg, weights_fingerprint(_model_of(trainer).state_dict())), "checkpoint": str(checkpoint or ""),
            "protocol_detail": proto["detail"], "file_list": str(cfg.extract),
            "test_path": str(Path(cfg.test_path).resolve()), "normalised": False}
    out = Path(cfg.extract_out)
    if _is_main(trainer):
        _save_npz(out, meta, **arrays)
    log.info("wrote the embeddings %s of %d files (%s protocol) to '%s'", tuple(arrays["embeddings"].shape),
             len(files), proto["name"], out)
    return out
