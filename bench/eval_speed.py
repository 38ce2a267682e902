"""Speed of the evaluation back end in one run: embedding extraction (files/s), scoring from cached embeddings
(trials/s) and EER + minDCF of 10^7 scores, each against the former or the usual approach, side by side.

    python bench/eval_speed.py --threads 2
    python bench/eval_speed.py --device cuda --embed_files 256

Embedding: ``--embed_files`` generated files of ``--seconds`` s (VoxCeleb1 averages 8.2 s) through ``--model`` with
random weights, by the paper protocol (10 crops of 400 frames) and as whole utterances (embedding.embed_files).
Scoring: random unit embeddings of 4,708 files x 10 crops x 512 on the 37,611 trials of VoxCeleb1-O (read from
../shared/data; random pairs of the same size when absent): scoring.score_trial_list (float32, cache-sized
chunks) against the former float64 implementation, and the cosine of whole-utterance embeddings.
Metrics: tuneThreshold.compute_metrics (EER, voxceleb_trainer's EER, minDCF at p 0.01 and 0.05) against
sklearn.metrics.roc_curve followed by the same EER and minDCF on its points. Contenders run interleaved after a
warm-up; the table shows medians of wall-clock time and of process (CPU) time, which other processes disturb less.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import plugins  # noqa: E402

from config import Config  # noqa: E402
from dtdysv.evaluation.embed import embed_files  # noqa: E402
from dtdysv.evaluation.score import score_trial_list  # noqa: E402
from SpeakerNet import Embedder  # noqa: E402
from tuneThreshold import compute_metrics  # noqa: E402

VOX1_O = ROOT.parent / "shared" / "data" / "voxceleb1_O_cleaned_trials.txt"
RATE = 16000


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(median wall s, median CPU s) per contender; one warm-up call each, then interleaved repeats."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for name, r in runs.items()}


def row(part: str, size: str, ours: str, baseline: str = "", ratio: str = "") -> None:
    print(f"{part:<34}{size:<30}{ours:<28}{baseline:<30}{ratio}".rstrip())


def ratio_text(ours: tuple[float, float], base: tuple[float, float]) -> str:
    return f"{base[0] / ours[0]:.1f}x / {base[1] / max(ours[1], 1e-9):.1f}x"


# ---- embedding ----------------------------------------------------------------------------------------------------


def bench_embedding(args: argparse.Namespace, device: torch.device) -> None:
    cfg = Config(model=args.model, nOut=512, n_mels=64, encoder_type="ASP", nDataLoaderThread=args.workers,
                 device=device.type, eval_frames=400, num_eval=10)
    torch.manual_seed(0)
    embedder = Embedder(plugins.build("model", cfg.model, cfg).to(device), device, mixedprec=args.mixedprec)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.embed_files):
            seconds = args.seconds * (0.75 + 0.5 * rng.random())  # lengths around the mean, all different
            soundfile.write(Path(tmp) / f"{i}.wav", 0.1 * rng.standard_normal(int(seconds * RATE)), RATE)
            files.append(f"{i}.wav")
        for eval_frames, label in ((400, "embedding, paper (10 x 400 fr.)"), (0, "embedding, whole utterances")):
            cfg.eval_frames = eval_frames
            embed_files(embedder, files[:2], tmp, cfg, show_progress=False)  # warm-up
            start = time.perf_counter()
            embed_files(embedder, files, tmp, cfg, show_progress=False)
            seconds = time.perf_counter() - start
            row(label, f"{len(files)} files ~{args.seconds:g} s", f"{len(files) / seconds:.1f} files/s")


# ---- scoring ------------------------------------------------------------------------------------------------------


def former_paper_scores(stacked: torch.Tensor, enroll: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """The previous implementation: gather 4096 trials, float64, |e|^2 + |t|^2 - 2 e.t."""
    out = []
    for i in range(0, enroll.numel(), 4096):
        e, t = stacked[enroll[i:i + 4096]].double(), stacked[test[i:i + 4096]].double()
        sq_e, sq_t = e.pow(2).sum(-1), t.pow(2).sum(-1)
        dist2 = torch.baddbmm(sq_e[:, :, None] + sq_t[:, None, :], e, t.transpose(1, 2), alpha=-2.0)
        out.append(-dist2.clamp_min_(0.0).sqrt_().mean(dim=(1, 2)))
    return torch.cat(out)


def bench_scoring(args: argparse.Namespace, device: torch.device) -> None:
    if VOX1_O.is_file():
        pairs = [tuple(line.split()[1:]) for line in VOX1_O.read_text().splitlines() if line.strip()]
        source = "VoxCeleb1-O"
    else:
        rng = np.random.default_rng(0)
        pairs = [(f"f{a}", f"f{b}") for a, b in rng.integers(0, 4708, size=(37611, 2))]
        source = "random pairs"
    files = list(dict.fromkeys(f for pair in pairs for f in pair))
    index = {name: i for i, name in enumerate(files)}
    g = torch.Generator().manual_seed(0)
    crops = F.normalize(torch.randn(len(files), 10, 512, generator=g), dim=-1).to(device)
    whole = crops[:, :1].contiguous()
    enroll = torch.tensor([index[e] for e, _ in pairs], device=device)
    test = torch.tensor([index[t] for _, t in pairs], device=device)
    batch = 256 if device.type == "cpu" else 4096

    def sync(x: object) -> object:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return x

    times = timed({"ours": lambda: sync(score_trial_list((index, crops), pairs, "paper", batch_size=batch)),
                   "former": lambda: sync(former_paper_scores(crops, enroll, test)),
                   "cosine": lambda: sync(score_trial_list((index, whole), pairs, "cosine"))}, args.repeats)
    ours = score_trial_list((index, crops), pairs, "paper", batch_size=batch)
    error = np.abs(ours - former_paper_scores(crops, enroll, test).cpu().numpy()).max()
    size = f"{len(pairs):,} trials ({source})"
    row("scoring, paper (10 x 10 crops)", size, f"{times['ours'][0]:.3f} s, {len(pairs) / times['ours'][0]:,.0f}/s",
        f"former float64: {times['former'][0]:.2f} s", ratio_text(times["ours"], times["former"]))
    row("", "", f"max |ours - float64| = {error:.1e}")
    row("scoring, whole (cosine)", size, f"{times['cosine'][0]:.3f} s, {len(pairs) / times['cosine'][0]:,.0f}/s")


# ---- metrics ------------------------------------------------------------------------------------------------------


def sklearn_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The usual approach: sklearn's ROC curve, then voxceleb_trainer's EER and minDCF over its points."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    fnr = 1 - tpr
    i = np.nanargmin(np.abs(fnr - fpr))
    out = {"eer_vt_percent": 100 * max(fpr[i], fnr[i])}
    for p in (0.01, 0.05):
        out[f"min_dcf_p{p}"] = float(np.min(p * fnr + (1 - p) * fpr) / min(p, 1 - p))
    return out


def bench_metrics(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(args.metrics_n) < 0.5).astype(np.int64)
    scores = rng.normal(size=args.metrics_n) + 2.0 * labels  # float64, all distinct
    times = timed({"ours": lambda: compute_metrics(scores, labels),
                   "sklearn": lambda: sklearn_metrics(scores, labels)}, args.repeats)
    ours, theirs = compute_metrics(scores, labels), sklearn_metrics(scores, labels)
    agree = all(abs(ours[k] - v) <= 1e-9 * max(1.0, abs(v)) for k, v in theirs.items())
    row("metrics: EER, minDCF p.01/.05", f"{args.metrics_n:.0e} scores", f"{times['ours'][0]:.2f} s",
        f"sklearn roc_curve: {times['sklearn'][0]:.2f} s", ratio_text(times["ours"], times["sklearn"]))
    row("", "", f"same numbers: {agree}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (torch.set_num_threads); 0: default")
    parser.add_argument("--model", default="DTDY_ResNet34_half", help="model for the embedding timing")
    parser.add_argument("--embed_files", type=int, default=8, help="generated files to embed (0: skip)")
    parser.add_argument("--seconds", type=float, default=8.2, help="mean file length in seconds")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the embedding")
    parser.add_argument("--mixedprec", action="store_true", help="embed with autocast (CUDA: fp16)")
    parser.add_argument("--metrics_n", type=int, default=10**7, help="scores for the metrics timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median) after a warm-up")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    print(f"device {device}, {torch.get_num_threads()} CPU threads; ratios: wall-clock / CPU time")
    row("part", "size", "ours", "baseline", "speed-up")
    if args.embed_files:
        bench_embedding(args, device)
    bench_scoring(args, device)
    bench_metrics(args)


if __name__ == "__main__":
    main()
