"""The embed stage: audio files -> ``embeddings.npz`` (a cache reused while it fits), and ``--extract``.

embeddings.npz: 'names' (F,), 'embeddings' float32 (F, C, nOut) as the model outputs them (C = num_eval, or 1 for whole
utterances), 'seconds' (F,) float64 durations, 'meta' (JSON). Whole utterances are batched only with files of equal
length, so every embedding is that of the file alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from torch.utils.data import DataLoader

from config import Config
from DatasetLoader import TestDataset
from dtdysv.data.audio import crop_samples
from dtdysv.data.lists import DataError, TrialList
from dtdysv.evaluation.results import (
    EvalError,
    EvalRun,
    ListResult,
    differences,
    identity,
    load_npz,
    protocol_of,
    save_npz,
    weights_fingerprint,
)
from dtdysv.runtime.fileio import read_lines
from dtdysv.runtime.setup import loader_workers
from SpeakerNet import Embedder

log = logging.getLogger(__name__)

CROPS_PER_BATCH = 64  # paper protocol: test crops embedded together
WHOLE_BATCH_SAMPLES = CROPS_PER_BATCH * crop_samples(400)  # whole utterances: samples per batch at most

def _audio_info(path: Path) -> tuple[int, int]:
    """(frames, sample rate) of an audio file, from its header."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as err:
        raise DataError(f"Cannot decode audio file '{path}': {err}") from None
    return info.frames, info.samplerate


def durations(files: Sequence[str], root: str | Path) -> np.ndarray:
    """Length in seconds of each of ``files`` (paths under ``root``), from the wav headers: (F,) float64."""
    infos = [_audio_info(Path(root) / name) for name in files]
    return np.array([frames / rate for frames, rate in infos], dtype=np.float64)


def _equal_length_batches(files: Sequence[str], root: str | Path) -> list[list[int]]:
    """Indices of files with the same length (and rate), in batches of at most WHOLE_BATCH_SAMPLES samples."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, name in enumerate(files):
        groups.setdefault(_audio_info(Path(root) / name), []).append(i)
    batches = []
    for (length, _), members in sorted(groups.items()):
        size = max(1, WHOLE_BATCH_SAMPLES // max(length, 1))
        batches += [members[j:j + size] for j in range(0, len(members), size)]
    return batches


def embed_files(embedder: Embedder, files: Sequence[str], root: str | Path, cfg: Config,
                show_progress: bool = True, what: str = "files", trials: Sequence[TrialList] = ()) -> torch.Tensor:
    """(F, C, nOut) float32 CPU embeddings of ``files`` under ``root``, C = num_eval or 1 (whole), not normalised;
    an audio error names the first line of ``trials`` that lists the file."""
    dataset = TestDataset(files, root, cfg.eval_frames, cfg.num_eval, resample=cfg.resample, trials=trials)
    pin = embedder.device.type == "cuda"
    workers = loader_workers(cfg.nDataLoaderThread)
    if cfg.eval_frames > 0:
        loader = DataLoader(dataset, batch_size=max(1, CROPS_PER_BATCH // cfg.num_eval), shuffle=False,
                            num_workers=workers, pin_memory=pin)
    else:
        loader = DataLoader(dataset, batch_sampler=_equal_length_batches(files, root), num_workers=workers,
                            pin_memory=pin)
    start = time.perf_counter()
    embeddings = torch.stack(embedder.embed(loader, len(files), show_progress))
    seconds = time.perf_counter() - start
    log.info("embedded %d %s (%s protocol) in %.1f s, %.1f files/s", len(files), what,
             protocol_of(cfg.eval_frames, cfg.num_eval)["name"], seconds, len(files) / max(seconds, 1e-9))
    return embeddings


def file_stats(files: Sequence[str], root: str | Path) -> np.ndarray:
    """(F, 2) int64: each file's size and modification time (ns), what tells a cached embedding from a stale one."""
    out = np.zeros((len(files), 2), dtype=np.int64)
    for i, name in enumerate(files):
        stat = (Path(root) / name).stat()
        out[i] = stat.st_size, stat.st_mtime_ns
    return out


def embed_stage(run: EvalRun, lists: Sequence[ListResult], embedder: Embedder, weights: str, normalize: bool,
                show_progress: bool = True) -> None:
    """Make embeddings.npz hold every file of the ``lists``: rows of files unchanged on disk (size and modification
    time) are reused, the others embedded (by every rank under DDP), and rank 0 rewrites the file. A file of other
    weights, protocol, model, --resample or test_path is rebuilt."""
    cfg, path, checkpoint = run.cfg, run.embeddings_file, run.checkpoint
    trials = [item.trials for item in lists]
    files = list(dict.fromkeys(f for t in trials for f in t.files))
    expected = {**identity(cfg, weights), "test_path": str(Path(cfg.test_path).resolve())}
    names: list[str] = []
    table = torch.zeros(0)
    seconds, stats = np.zeros(0), np.zeros((0, 2), dtype=np.int64)
    meta: dict[str, Any] = {}
    found = load_npz(path)
    if found is not None:
        problems = differences(found[0], expected)
        if problems:
            log.info("embedding cache '%s' does not fit (%s): embedding again", path, "; ".join(problems))
        else:
            meta, names, table = found[0], found[1]["names"].tolist(), torch.from_numpy(found[1]["embeddings"])
            seconds = found[1]["seconds"] if "seconds" in found[1] else durations(names, cfg.test_path)
            stats = found[1].get("stats", np.zeros((len(names), 2), dtype=np.int64))  # none: all stale
    wanted = set(files)
    rows = [i for i, name in enumerate(names) if name in wanted]
    now = file_stats([names[i] for i in rows], cfg.test_path)
    stale = {i for i, current in zip(rows, now, strict=True) if tuple(stats[i]) != tuple(current)}
    if stale:
        log.info("%d cached files changed on disk since they were embedded (e.g. '%s'): embedding them again",
                 len(stale), names[min(stale)])
        keep = [i for i in range(len(names)) if i not in stale]
        names, table, seconds, stats = [names[i] for i in keep], table[keep], seconds[keep], stats[keep]
    known = set(names)
    missing = [f for f in files if f not in known]
    if missing:
        new = embed_files(embedder, missing, cfg.test_path, cfg, show_progress, "test files", trials)
        table = new if not names else torch.cat([table, new])
        seconds = np.concatenate([seconds, durations(missing, cfg.test_path)])
        stats = np.concatenate([stats, file_stats(missing, cfg.test_path)])
        names += missing
    else:
        log.info("reusing the cached embeddings of all %d files from '%s'", len(files), path)
    stale_meta = meta.get("test_normalize") != normalize or bool(checkpoint and
                                                                  meta.get("checkpoint") != str(checkpoint))
    if embedder.env.is_main and (missing or stale_meta):
        meta = {**expected, "checkpoint": str(checkpoint or meta.get("checkpoint", "")), "test_normalize": normalize,
                "n_files": len(names)}
        save_npz(path, meta, names=np.array(names), embeddings=table.numpy(), seconds=seconds, stats=stats)


def read_file_list(path: str | Path, test_path: str | Path = "") -> tuple[list[str], list[str] | None]:
    """Files of an --extract list, duplicates dropped, and their labels where the list has some: '<path>' lines,
    '<label> <path>' lines (a train list), or a trial list ('<0|1> <enroll> <test>', or '<enroll> <test>' where both
    are files under ``test_path``), whose files are those of its trials."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"File list '{path}' (--extract) does not exist.")
    rows = [(n, line.split()) for n, line in enumerate(read_lines(path, f"File list '{path}' (--extract)"), start=1)
            if line.strip()]
    ncols = len(rows[0][1]) if rows else 0
    bad = [f"line {n}: {' '.join(t)!r}" for n, t in rows if len(t) != ncols]
    if not rows or ncols not in (1, 2, 3) or bad:
        raise EvalError(f"File list '{path}' (--extract) must have '<path>', '<label> <path>' or trial-list lines "
                        f"('<0|1> <enroll> <test>'; paths under --test_path), the same on every line; bad: "
                        f"{', '.join(bad[:5]) or 'the first line'}.")
    pairs = ncols == 3 or (ncols == 2 and all((Path(test_path) / name).is_file() for name in rows[0][1]))
    if pairs:  # a trial list: its files, in order of first appearance
        return list(dict.fromkeys(name for _, t in rows for name in t[-2:])), None
    first: dict[str, str] = {}
    for _, t in rows:
        first.setdefault(t[-1], t[0])
    return list(first), (list(first.values()) if ncols == 2 else None)


def run_extract(cfg: Config, embedder: Embedder, checkpoint: str | Path | None = None,
                show_progress: bool = True) -> Path:
    """Embed the ``--extract`` list into ``--extract_out``: 'names' (N,), 'embeddings' float32 (N, nOut), one vector
    per file (for the paper protocol the mean of its crops; (N, num_eval, nOut) with --extract_crops), as the model
    outputs them (not normalised), 'labels' (N,) for labelled lists, 'meta' (JSON)."""
    if not cfg.extract or not cfg.extract_out:
        raise EvalError("Embedding extraction needs --extract <file list> and --extract_out <file.npz>.")
    if Path(cfg.extract_out).is_dir():
        raise EvalError(f"--extract_out '{cfg.extract_out}' is a folder; give the .npz file to write, e.g. "
                        f"'{Path(cfg.extract_out) / 'embeddings.npz'}'.")
    files, labels = read_file_list(cfg.extract, cfg.test_path)
    absent = [f for f in files if not (Path(cfg.test_path) / f).is_file()]
    if absent:
        raise EvalError(f"{len(absent)} files of --extract '{cfg.extract}' do not exist under --test_path "
                        f"'{cfg.test_path}', e.g. '{absent[0]}'.")
    embeddings = embed_files(embedder, files, cfg.test_path, cfg, show_progress)
    proto = protocol_of(cfg.eval_frames, cfg.num_eval)
    per_file = embeddings[:, 0] if proto["name"] == "whole" else embeddings.mean(1)
    arrays = {"names": np.array(files), "embeddings": (embeddings if cfg.extract_crops and proto["name"] == "paper"
                                                      else per_file).numpy()}
    if labels is not None:
        arrays["labels"] = np.array(labels)
    meta = {**identity(cfg, weights_fingerprint(embedder.model.state_dict())), "checkpoint": str(checkpoint or ""),
            "protocol_detail": proto["detail"], "file_list": str(cfg.extract),
            "per_file": "crops" if cfg.extract_crops and proto["name"] == "paper" else "mean of the crops",
            "test_path": str(Path(cfg.test_path).resolve()), "normalised": False}
    out = Path(cfg.extract_out)
    if embedder.env.is_main:
        save_npz(out, meta, **arrays)
    log.info("wrote the embeddings %s of %d files (%s protocol) to '%s'", tuple(arrays["embeddings"].shape),
             len(files), proto["name"], out)
    return out
