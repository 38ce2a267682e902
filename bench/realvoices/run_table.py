#!/usr/bin/env python
"""Train and evaluate the systems of the real-voice table on the corpus of build_corpus.py, and write the table.

    python bench/realvoices/run_table.py --corpus data/realvoices --out exps/realvoices          # 98 min on 2 CPU cores
    python bench/realvoices/run_table.py --systems DTDY_ResNet34_quarter --seeds 1 --max_epoch 1 # a smoke run
    python bench/realvoices/run_table.py --validation   # the MFCC floor of the validation split, for tuning

Systems (configs/realvoices/, the small-data recipe): DTDY-ResNet-34 x0.25 and its static twin ResNet34_quarter with
``--seeds`` (default 1 2 3, through ``trainSpeakerNet.py --seeds``), ECAPA-TDNN c512 and CAM++ with the first seed.
Each trains on ``train_full_list.txt`` (training and validation speakers) and is scored on ``test_trials.txt``; the
validation list is for tuning a recipe (``--test_list <corpus>/val_trials.txt`` with ``train_list.txt``), never for
the table. A training-free floor scores the same trials: per file the mean and standard deviation over frames of 20
MFCCs, each dimension standardised with the training files' statistics, cosine scoring. DTDY and its twin are
compared seed by seed with compareSystems.py's paired speaker bootstrap.

Writes ``<out>/<system>/seed<k>/`` (experiment folders), ``<out>/mfcc_floor/result/`` and ``<out>/table.md``; a
rerun resumes every run and rewrites the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import compareSystems  # noqa: E402
from config import parse_args  # noqa: E402
from dtdysv.data.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, WIN_LENGTH, read_audio  # noqa: E402
from dtdysv.data.lists import read_train_list, read_trial_list  # noqa: E402
from dtdysv.errors import UserError  # noqa: E402
from dtdysv.evaluation.metrics import metrics_stage  # noqa: E402
from dtdysv.evaluation.results import RAW, EvalRun, ScoreSet, list_results, variant_file, write_scores  # noqa: E402
from dtdysv.runtime.fileio import atomic_write_text  # noqa: E402
from dtdysv.summary import with_ci, write_summary  # noqa: E402

log = logging.getLogger("run_table")

CONFIGS = ROOT / "configs" / "realvoices"
SYSTEMS = {"DTDY_ResNet34_quarter": "all", "ResNet34_quarter": "all", "ECAPA_TDNN_c512": "first",
           "CAMPPlus": "first"}  # system -> the seeds it runs: all of --seeds, or the first
PAIR = ("ResNet34_quarter", "DTDY_ResNet34_quarter")  # (A, B) of the paired test: B - A


def train(system: str, seeds: Sequence[int], corpus: Path, out: Path, max_epoch: int) -> list[Path]:
    """Train and evaluate ``system`` once per seed (trainSpeakerNet.py --seeds, in its own process); returns the
    seed folders."""
    speakers = len(read_train_list(corpus / "train_full_list.txt", corpus / "wav").speakers)
    command = [sys.executable, str(ROOT / "trainSpeakerNet.py"), "--config", str(CONFIGS / f"{system}.yaml"),
               "--seeds", *map(str, seeds), "--save_path", str(out / system),
               "--train_list", str(corpus / "train_full_list.txt"), "--train_path", str(corpus / "wav"),
               "--test_list", str(corpus / "test_trials.txt"), "--test_path", str(corpus / "wav"),
               "--nClasses", str(speakers)]
    if max_epoch:
        command += ["--max_epoch", str(max_epoch), "--test_interval", str(max_epoch)]
    log.info("%s: %s", system, " ".join(command))
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise UserError(f"Training {system} failed (its log is in {out / system}/seed<k>/result/train.log).")
    return [out / system / f"seed{seed}" for seed in seeds]


def mfcc_statistics(paths: Sequence[Path], desc: str) -> np.ndarray:
    """(N, 40): per file the mean and standard deviation over frames of 20 MFCCs (40 mels, 25-ms windows, 10-ms hop)."""
    mfcc = torchaudio.transforms.MFCC(SAMPLE_RATE, n_mfcc=20, melkwargs={"n_fft": N_FFT, "win_length": WIN_LENGTH,
                                                                         "hop_length": HOP_LENGTH, "n_mels": 40})
    rows = []
    with torch.no_grad():
        for path in tqdm(paths, desc=desc, unit="file"):
            frames = mfcc(torch.from_numpy(read_audio(path)))  # (20, T)
            rows.append(torch.cat([frames.mean(1), frames.std(1)]).numpy())
    return np.stack(rows)


FLOORS = {"test": ("test_trials.txt", "train_full_list.txt", "mfcc_floor"),
          "val": ("val_trials.txt", "train_list.txt", "mfcc_floor_val")}  # split -> trials, training list, folder


def mfcc_floor(corpus: Path, out: Path, split: str = "test") -> Path:
    """The training-free floor on the trials of ``split`` (FLOORS), standardised with the statistics of the files
    the systems of that split train on: a result folder (scores, metrics.json with intervals)."""
    trials_name, train_name, folder_name = FLOORS[split]
    wav = corpus / "wav"
    trials = read_trial_list(corpus / trials_name, wav)
    train = read_train_list(corpus / train_name, wav)
    reference = mfcc_statistics([Path(p) for p in train.files], "training files (statistics)")
    mean, std = reference.mean(0), reference.std(0) + 1e-8
    names = trials.files
    features = (mfcc_statistics([wav / name for name in names], "test files") - mean) / std
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    index = {name: i for i, name in enumerate(names)}
    scores = np.einsum("nd,nd->n", features[[index[e] for e in trials.enroll]],
                       features[[index[t] for t in trials.test]])
    folder = out / folder_name
    cfg = parse_args(["--test_list", str(corpus / trials_name), "--test_path", str(wav)])
    run = EvalRun(cfg, folder / "result")
    (item,) = list_results([trials])
    write_scores(run.list_dir(item.name) / variant_file(RAW), scores, trials)
    item.source = {"weights": None, "embeddings": {"protocol": "mfcc_floor"}}  # no model: the features themselves
    item.raw = ScoreSet(RAW, {"test_list": trials.path, "protocol": "mfcc_floor",
                              "protocol_detail": "mean and std of 20 MFCCs per file, standardised with the training "
                              "files' statistics, cosine score", "n_files": len(names), "n_trials": len(scores)})
    metrics_stage(run, [item])
    return folder


def paired_tests(pairs: Sequence[tuple[Path, Path]], out: Path) -> list[str]:
    """compareSystems.py's paired bootstrap of each (A, B) pair; one Markdown row each."""
    rows = []
    for a, b in pairs:
        report = out / f"paired_{b.parent.name}_vs_{a.parent.name}_{b.name}.json"
        if compareSystems.main([str(a), str(b), "--json", str(report)]) != 0:
            raise UserError(f"The paired comparison of '{a}' and '{b}' failed.")
        figures = json.loads(report.read_text())["metrics"]
        eer, dcf = figures["eer_percent"], figures["min_dcf_p0.01"]
        rows.append(f"| {b.parent.name} - {a.parent.name}, {b.name} | "
                    f"{with_ci(eer['difference'], eer['difference_ci95'], 2, signed=True)} | {eer['p_value']:.3g} | "
                    f"{with_ci(dcf['difference'], dcf['difference_ci95'], 4, signed=True)} | {dcf['p_value']:.3g} |")
    return rows


def run(corpus: Path, out: Path, systems: Sequence[str], seeds: Sequence[int], max_epoch: int) -> str:
    for name in ("train_full_list.txt", "test_trials.txt"):
        if not (corpus / name).is_file():
            raise UserError(f"'{corpus / name}' does not exist: build the corpus first "
                            f"(python bench/realvoices/build_corpus.py --out {corpus}).")
    folders = {system: train(system, seeds if SYSTEMS[system] == "all" else seeds[:1], corpus, out, max_epoch)
               for system in systems}
    floor = mfcc_floor(corpus, out)
    table = write_summary([*[f for runs in folders.values() for f in runs], floor])
    pairs = list(zip(folders.get(PAIR[0], []), folders.get(PAIR[1], []), strict=False))
    text = ["# Real-voice table", "", f"Corpus: `{corpus}` (test_trials.txt); systems trained on train_full_list.txt. "
            "Each run with its 95% interval (speaker bootstrap); mean and std over seeds.", "", table]
    if pairs:
        text += ["## DTDY against its static twin (paired speaker bootstrap, B - A)", "",
                 "| pair, seed | EER % difference (95% CI) | p | minDCF p=0.01 difference (95% CI) | p |",
                 "|---|---:|---:|---:|---:|", *paired_tests(pairs, out), ""]
    else:
        log.info("the paired test needs both %s and %s: skipped", *PAIR)
    markdown = "\n".join(text)
    atomic_write_text(out / "table.md", markdown)
    return markdown


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/realvoices"), help="the folder of build_corpus.py")
    parser.add_argument("--out", type=Path, default=Path("exps/realvoices"), help="where the runs and table go")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS), metavar="SYSTEM",
                        help=f"systems to train (default: all: {', '.join(SYSTEMS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the DTDY pair")
    parser.add_argument("--max_epoch", type=int, default=0, help="override the configs' epochs (0: theirs)")
    parser.add_argument("--validation", action="store_true",
                        help="only score the MFCC floor on val_trials.txt (statistics of train_list.txt) into "
                        "<out>/mfcc_floor_val: the figure a recipe tuned on the validation split has to beat")
    args = parser.parse_args(argv)
    if args.validation and (args.systems != list(SYSTEMS) or args.seeds != [1, 2, 3] or args.max_epoch):
        parser.error("--validation trains nothing: it takes only --corpus and --out, not --systems, --seeds or "
                     "--max_epoch")
    try:
        if args.validation:
            folder = mfcc_floor(args.corpus, args.out, "val")
            print(write_summary([folder]))
            return 0
        print(run(args.corpus, args.out, args.systems, args.seeds, args.max_epoch))
    except UserError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
