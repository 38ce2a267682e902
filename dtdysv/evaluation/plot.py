"""The plot stage: a list's metrics.json + its score files -> its ``det.png``, the DET curves of its variants with
their EER and minDCF points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dtdysv.evaluation.results import DET_FILE, EvalRun, ListResult, read_list_metrics, read_scores
from dtdysv.runtime.fileio import atomic_path
from tuneThreshold import det_curve, rates_at


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``n`` points of a curve, evenly spaced along its length (for plotting 10^7-point curves)."""
    if x.size <= n:
        return x, y
    length = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
    keep = np.union1d(np.searchsorted(length, np.linspace(0.0, length[-1], n)).clip(0, x.size - 1), [0, x.size - 1])
    return x[keep], y[keep]


def _threshold(value: float | None) -> float:
    return np.inf if value is None else float(value)  # metrics.json writes a reject-all threshold as null


STYLES = {"raw": "-", "asnorm": "--", "snorm": "-.", "cal": ":"}  # line style of each variant


def plot_det(curves: Sequence[tuple[str, np.ndarray, np.ndarray, Mapping[str, Any], str]], path: Path,
             p_targets: Sequence[float], title: str = "DET curve") -> None:
    """DET curves to a PNG. curves: (label, scores (N,), labels (N,), metrics, line style) each."""
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
        p_fpr, p_fnr = rates_at(scores, labels, [_threshold(m[f"min_dcf_p{float(p)}_threshold"]) for p in p_targets])
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
    ax.set_title(title)
    ax.grid(True, color="0.9")
    ax.legend(loc="lower left", fontsize="small")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)


def _p_targets(metrics: Mapping[str, Any]) -> set[float]:
    return {float(k[len("min_dcf_p"):-len("_threshold")]) for k in metrics
            if k.startswith("min_dcf_p") and k.endswith("_threshold")}


def plot_list(folder: Path) -> Path | None:
    """``<folder>/det.png`` of a list's folder from its metrics.json: one curve per labelled variant; None (nothing
    written, an earlier det.png removed) for an unlabeled list."""
    folder = Path(folder)
    metrics = read_list_metrics(folder)
    curves = []
    for variant, entry in metrics["variants"].items():
        if "eer_percent" in entry:
            scores = read_scores(folder / entry["scores_file"])
            curves.append((variant, scores.scores, scores.labels, entry, STYLES.get(variant, "-")))
    if not curves:
        (folder / DET_FILE).unlink(missing_ok=True)
        return None
    p_targets = sorted(set.intersection(*(_p_targets(m) for *_, m, _ in curves)))  # variants kept from earlier runs
    plot_det(curves, folder / DET_FILE, p_targets, f"DET curve: {metrics.get('list', folder.name)}")
    return folder / DET_FILE


def plot_stage(run: EvalRun, lists: list[ListResult]) -> list[Path]:
    """The det.png of every labelled list's folder."""
    return [path for item in lists if (path := plot_list(run.list_dir(item.name))) is not None]
