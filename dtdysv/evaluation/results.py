"""The result folder's layout, file names and formats, the embedding protocol, cache identity and the typed records
the evaluation stages pass along.

Result folder (``<save_path>/result``): what every trial list shares at the top, one folder per list below it,
named by the list file's stem (``_2``, ``_3`` for repeats within one evaluation)::

    result/
      embeddings.npz, cohort.npz  caches of every list: 'names', 'embeddings' (float32, as the model outputs
                                  them), 'meta' (JSON)
      calibration.json            the calibration model
      eval.log, train.log
      <list>/
        scores.txt                raw scores: 'score [label] enroll test'
        scores.asnorm.txt         normalised (--score_norm; scores.snorm.txt)
        scores.cal.txt            calibrated (llrs)
        metrics.json              the list's role, source (weights, protocol) and the figures of every variant
        det.png                   the DET curves of its variants

Evaluating a list writes only its own folder. A variant (raw, asnorm, snorm, cal) of an earlier evaluation of the
list stays beside a later one's while both come from the same embeddings (weights, protocol), trials and role;
otherwise it is removed. A result folder of the flat layout of older versions is not read: rerun --eval. The file
runs past 300 lines because it is the one owner of every name and format of the folder.

Protocols: ``paper`` (``eval_frames`` > 0): ``num_eval`` crops per file, score = minus the mean Euclidean distance over
crop pairs (DTDY-CNN, arXiv 2203.15277; voxceleb_trainer). ``whole`` (0): whole utterances, cosine score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config import MODEL_KEYS, Config
from dtdysv.data.lists import TrialList
from dtdysv.errors import UserError
from dtdysv.evaluation.asnorm import raw_mean
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime.fileio import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

EMBEDDINGS_FILE, COHORT_FILE = "embeddings.npz", "cohort.npz"
METRICS_FILE, DET_FILE, CALIBRATION_FILE = "metrics.json", "det.png", "calibration.json"
CACHE_FORMAT = "dtdy-sv-embeddings"
COHORT_ARRAYS = ("file_means", "raw_means", "centred_means", "owner")  # what cohort.npz holds per file (normalise.py)
RAW, CAL = "raw", "cal"
VARIANTS = (RAW, "asnorm", "snorm", CAL)  # the order of metrics.json and of the DET legend
ROLE_TEST = "test (held out)"
ROLE_CALIBRATION = "calibration (training figures, not held out)"


class EvalError(UserError):
    pass


class ScoreNorm(StrEnum):
    """--score_norm: none, AS-norm (the top --norm_top_n cohort scores) or S-norm (the whole cohort)."""

    NONE = "none"
    ASNORM = "asnorm"
    SNORM = "snorm"


def variant_file(variant: str) -> str:
    """The score file of a variant in its list's folder: scores.txt (raw), scores.<variant>.txt otherwise."""
    return "scores.txt" if variant == RAW else f"scores.{variant}.txt"


@dataclass
class ScoreSet:
    """One variant of a list's scores (raw, asnorm, snorm, cal) and its description in metrics.json."""

    variant: str
    info: dict[str, Any]

    @property
    def scores_file(self) -> str:
        return variant_file(self.variant)

    def description(self) -> dict[str, Any]:
        return {**self.info, "scores_file": self.scores_file}


@dataclass
class ListResult:
    """A trial list as the stages see it: its name (its folder), its trials and the variants scored so far."""

    name: str
    trials: TrialList | None  # None when rebuilt from metrics.json, which keeps the score files only
    calibration: bool = False  # the --calibration_list: its figures are training figures, never held-out ones
    raw: ScoreSet | None = None
    norm: ScoreSet | None = None
    cal: ScoreSet | None = None
    source: dict[str, Any] = field(default_factory=dict)  # what the scores come from: ``scores_source``

    @property
    def role(self) -> str:
        return ROLE_CALIBRATION if self.calibration else ROLE_TEST

    def variants(self) -> dict[str, ScoreSet]:
        return {part.variant: part for part in (self.raw, self.norm, self.cal) if part is not None}

    def final(self) -> ScoreSet:
        """The score file calibration reads: the normalised one if any, else the raw one."""
        final = self.norm or self.raw
        if final is None:
            raise EvalError(f"The list '{self.name}' has not been scored yet.")
        return final


@dataclass(frozen=True)
class EvalRun:
    """What every stage shares: the options, the result folder, the device of the maths and the weights' file."""

    cfg: Config
    result_dir: Path
    device: torch.device = torch.device("cpu")
    checkpoint: str | Path | None = None

    def list_dir(self, name: str) -> Path:
        """The folder of the list ``name``."""
        return self.result_dir / name

    @property
    def embeddings_file(self) -> Path:
        return self.result_dir / EMBEDDINGS_FILE

    @property
    def cohort_file(self) -> Path:
        return self.result_dir / COHORT_FILE

    @property
    def score_norm(self) -> ScoreNorm:
        return ScoreNorm(self.cfg.score_norm)

    @property
    def p_targets(self) -> tuple[float, ...]:
        """The p_target values of the minDCF: 0.01, 0.05 and --dcf_p_target."""
        return tuple(sorted({0.01, 0.05, float(self.cfg.dcf_p_target)}))

    def embeddings(self, why: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) of embeddings.npz; ``why`` (what needs it) names it in the error if absent."""
        found = load_npz(self.embeddings_file)
        if found is None:
            raise EvalError(f"{why} needs the embeddings file '{self.embeddings_file}', which does not exist: run "
                            f"--eval to write it.")
        return found

    def cohort(self, why: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) of cohort.npz; ``why`` (the option that needs it) names it in the error if absent."""
        found = load_npz(self.cohort_file)
        if found is None:
            raise EvalError(f"{why} needs the cohort file '{self.cohort_file}', which does not exist: run --eval "
                            f"(it writes it from --train_list).")
        if missing := [key for key in COHORT_ARRAYS if key not in found[1]]:
            raise EvalError(f"The cohort file '{self.cohort_file}' has no {', '.join(missing)} (an older version): "
                            f"run --eval without --score_from_cache to rebuild it.")
        return found

    def train_mean(self) -> torch.Tensor:
        """The training-set mean (D,) of the raw embeddings, of --mean_subtraction (from cohort.npz)."""
        return raw_mean(torch.from_numpy(self.cohort("--mean_subtraction")[1]["raw_means"]))


def list_results(trial_lists: Sequence[TrialList], calibration: TrialList | None = None) -> list[ListResult]:
    """The evaluation's lists (--calibration_list last) with distinct names, those of their folders."""
    lists = [*trial_lists, calibration] if calibration is not None else list(trial_lists)
    return [ListResult(name, trials, calibration is not None and i == len(lists) - 1)
            for i, (name, trials) in enumerate(zip(list_names(lists), lists, strict=True))]


def protocol_of(eval_frames: int, num_eval: int) -> dict[str, Any]:
    """The embedding protocol as recorded in results and caches: name, scoring, crops, description."""
    if eval_frames > 0:
        return {"name": "paper", "scoring": "paper", "eval_frames": eval_frames, "num_eval": num_eval,
                "detail": f"{num_eval} crops of {eval_frames} frames per file, score = -mean Euclidean "
                          f"distance over the {num_eval}x{num_eval} crop pairs"}
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
    from dtdysv.runtime import plugins  # only an official checkpoint needs the model's parameter names

    model_sd, _, _ = ckpt.split_weights(obj, path, plugins.build("model", cfg.model, cfg).state_dict())
    return weights_fingerprint(model_sd)


def identity(cfg: Config, weights: str | None) -> dict[str, Any]:
    """What an embeddings file must agree on to be reused (``weights`` None: any weights)."""
    proto = protocol_of(cfg.eval_frames, cfg.num_eval)
    return {"format": CACHE_FORMAT, "version": 1, "protocol": proto["name"], "eval_frames": proto["eval_frames"],
            "num_eval": proto["num_eval"], "model": {k: getattr(cfg, k) for k in MODEL_KEYS}, "weights": weights,
            "resample": cfg.resample}


def differences(meta: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """'key: cached x, now y' for every expected value (not None) that ``meta`` does not hold."""
    return [f"{key}: cached {meta.get(key)!r}, now {value!r}" for key, value in expected.items()
            if value is not None and meta.get(key) != value]


def save_npz(path: str | Path, meta: Mapping[str, Any], **arrays: np.ndarray) -> None:
    """np.savez (uncompressed) of ``arrays`` and the JSON ``meta``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(meta, arrays) of an embeddings, cohort or --extract file; None if absent. A damaged file (truncated, not a
    .npz, no meta) is an EvalError naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        if not isinstance(meta, dict):
            raise ValueError("its 'meta' is not a JSON object")
        return meta, arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise EvalError(f"'{path}' is damaged or truncated ({type(err).__name__}: {err}). Delete it and rerun: the "
                        f"stage that wrote it (--eval, or --extract) writes it again.") from None


@dataclass
class ScoreFile:
    """The trials of a score file: scores (N,) float64, labels (N,) int64 or None (unlabeled), file names."""

    scores: np.ndarray
    labels: np.ndarray | None
    enroll: list[str]
    test: list[str]


def write_scores(path: Path, scores: np.ndarray, trials: TrialList) -> None:
    """One line per trial: 'score label enroll test' (no label column for an unlabeled list), atomically."""
    if trials.labels is None:
        lines = [f"{s:.6f} {e} {t}" for s, e, t in zip(scores, trials.enroll, trials.test, strict=True)]
    else:
        lines = [f"{s:.6f} {lab} {e} {t}"
                 for s, lab, e, t in zip(scores, trials.labels, trials.enroll, trials.test, strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_scores(path: Path) -> ScoreFile:
    """A score file of ``write_scores``."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    width = {len(r) for r in rows}
    if not rows or len(width) != 1 or width.pop() not in (3, 4):
        raise EvalError(f"Score file '{path}' must have 'score label enroll test' or 'score enroll test' lines, the "
                        f"same on every line.")
    labeled = len(rows[0]) == 4
    return ScoreFile(np.array([float(r[0]) for r in rows]), np.array([int(r[1]) for r in rows]) if labeled else None,
                     [r[-2] for r in rows], [r[-1] for r in rows])


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


def check_finite(scores: np.ndarray, trials: TrialList) -> None:
    if not np.isfinite(scores).all():
        raise EvalError(f"{int((~np.isfinite(scores)).sum())} of {len(scores)} scores of '{trials.path}' are not "
                        f"finite: the model's embeddings contain NaN or inf (diverged or corrupt weights?).")


def trials_digest(trials: TrialList) -> str:
    """SHA-1 of a list's trials (labels, enroll and test names, in order): tells its results from another list's."""
    labels = trials.labels.tolist() if trials.labels is not None else [None] * len(trials.enroll)
    lines = (f"{lab} {e} {t}\n" for lab, e, t in zip(labels, trials.enroll, trials.test, strict=True))
    return hashlib.sha1("".join(lines).encode()).hexdigest()


def older_layout(result_dir: Path) -> list[str]:
    """The result files an older version wrote into the result folder itself (the flat layout), sorted."""
    return sorted(p.name for p in Path(result_dir).glob("*") if p.is_file() and (
        p.name in (METRICS_FILE, DET_FILE) or (p.name.startswith("scores") and p.suffix == ".txt")))


def _older_version(result_dir: Path) -> EvalError:
    return EvalError(f"'{result_dir}' was written by an older version (one metrics.json and scores*.txt for every "
                     f"list in the folder itself: {', '.join(older_layout(result_dir)[:4])}); this version keeps a "
                     f"folder per list. Rerun trainSpeakerNet.py --eval (or --eval --score_from_cache, without "
                     f"the model) to write it again.")


def _is_list_folder(folder: Path) -> bool:
    try:
        return "variants" in json.loads((folder / METRICS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def list_folders(result_dir: Path) -> dict[str, Path]:
    """name -> folder of every list evaluated into ``result_dir`` (the folders holding a list's metrics.json)."""
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(result_dir.iterdir()) if p.is_dir() and _is_list_folder(p)}


def require_lists(result_dir: Path) -> dict[str, Path]:
    """``list_folders``, or an EvalError if there are none: for the older flat layout, or nothing evaluated."""
    found = list_folders(result_dir)
    if not found and older_layout(result_dir):
        raise _older_version(Path(result_dir))
    if not found:
        raise EvalError(f"'{result_dir}' holds no evaluated trial list (no <list>/{METRICS_FILE}); run "
                        f"trainSpeakerNet.py --eval first.")
    return found


def read_list_metrics(folder: Path) -> dict[str, Any]:
    """The metrics.json of a list's folder; EvalError if it is absent, damaged or of the older flat layout."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise EvalError(f"'{path}' does not exist: evaluate the list with trainSpeakerNet.py --eval.")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvalError(f"'{path}' cannot be read ({err}); rerun --eval (or --eval --score_from_cache).") from None
    if isinstance(metrics, dict) and "variants" not in metrics and ("lists" in metrics or "test_list" in metrics):
        raise _older_version(Path(folder))
    if not isinstance(metrics, dict) or not isinstance(metrics.get("variants"), dict):
        raise EvalError(f"'{path}' is not the metrics.json of a list (no 'variants'); rerun --eval.")
    return metrics


def write_metrics(folder: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Write a list's metrics.json; returns its content as read back (JSON types, no infinities)."""
    text = json.dumps(finite_json(metrics), indent=2)
    atomic_write_text(Path(folder) / METRICS_FILE, text + "\n")
    return json.loads(text)


def finite_json(obj: Any) -> Any:
    """JSON has no infinity: non-finite floats (e.g. a reject-all threshold) become null."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj
