"""Speed of the speaker-resampling bootstrap (tuneThreshold.bootstrap_intervals) on a synthetic trial list shaped like
VoxCeleb1-H, against the direct approach (build each resampled trial list, then compute_metrics) on the same draws.

    python bench/bootstrap_speed.py
    python bench/bootstrap_speed.py --trials 37611 --speakers 40 --groups 2    # VoxCeleb1-O-sized
    python bench/bootstrap_speed.py --target_mean 0.3                          # a weaker system (EER ~10%)

The list: ``--speakers`` speakers in ``--groups`` groups (VoxCeleb1-H pairs speakers of one nationality and
gender), ``--files`` files each; half the trials are target pairs of one speaker's files, half non-target pairs of
two speakers of one group. Scores: cosine-like, with a per-speaker offset (some voices are easier than others),
written with 6 decimals as score files are (so there are ties). The direct approach is timed on a few resamples and
scaled to ``--resamples``; its values must equal those of the vectorised code for the same draws. Prints wall-clock
and process (CPU) time; other processes on the machine disturb the wall-clock figure more.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tuneThreshold as tt  # noqa: E402


def synthetic_list(n_trials: int, n_speakers: int, n_groups: int, n_files: int, seed: int,
                   target_mean: float = 0.55) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(scores (N,), labels (N,), enroll names, test names) with VoxCeleb-style names 'id<speaker>/<video>/<n>.wav'."""
    if n_groups < 1 or n_speakers < 2 * n_groups:
        raise SystemExit(f"--groups must be between 1 and --speakers / 2, got {n_groups} groups of {n_speakers}")
    rng = np.random.default_rng(seed)
    group = rng.permutation(n_speakers) % n_groups  # every group has at least two speakers
    n_tar = n_trials // 2
    spk_t = rng.integers(0, n_speakers, n_tar)
    e_non = rng.integers(0, n_speakers, n_trials - n_tar)
    t_non = np.empty_like(e_non)
    for g in range(n_groups):  # a non-target partner from the same group, never the speaker itself
        members = np.flatnonzero(group == g)
        rows = np.flatnonzero(group[e_non] == g)
        k = rng.integers(0, members.size - 1, rows.size)
        t_non[rows] = members[k + (k >= np.searchsorted(members, e_non[rows]))]
    enroll_spk = np.concatenate((spk_t, e_non))
    test_spk = np.concatenate((spk_t, t_non))
    labels = np.concatenate((np.ones(n_tar, np.int64), np.zeros(n_trials - n_tar, np.int64)))
    offset = rng.normal(0.0, 0.06, n_speakers)
    target = target_mean + offset[spk_t] + rng.normal(0.0, 0.12, n_tar)
    non = 0.05 + 0.5 * (offset[e_non] + offset[t_non]) + rng.normal(0.0, 0.1, n_trials - n_tar)
    scores = np.round(np.concatenate((target, non)), 6)
    files_e, files_t = rng.integers(0, n_files, n_trials), rng.integers(0, n_files, n_trials)
    enroll = [f"id{s:05d}/v{f % 7}/{f:05d}.wav" for s, f in zip(enroll_spk, files_e, strict=True)]
    test = [f"id{s:05d}/v{f % 7}/{f:05d}.wav" for s, f in zip(test_spk, files_t, strict=True)]
    return scores, labels, enroll, test


def direct(scores: np.ndarray, labels: np.ndarray, ce: np.ndarray, ct: np.ndarray, counts: np.ndarray,
           p_targets: tuple[float, ...]) -> np.ndarray:
    """(1 + len(p_targets), R): each resampled trial list built by repetition, then compute_metrics."""
    out = []
    for r in range(counts.shape[1]):
        c = counts[:-1, r].astype(np.int64)
        weight = np.where(ce == ct, c[ce], c[ce] * c[ct])
        m = tt.compute_metrics(np.repeat(scores, weight), np.repeat(labels, weight), p_targets)
        out.append([m["eer_percent"] / 100, *(m[f"min_dcf_p{float(p)}"] for p in p_targets)])
    return np.array(out).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=552_536, help="trials (VoxCeleb1-H: 552,536)")
    parser.add_argument("--speakers", type=int, default=1190, help="speakers (VoxCeleb1-H: 1,190)")
    parser.add_argument("--groups", type=int, default=24, help="nationality-gender groups of the non-targets")
    parser.add_argument("--files", type=int, default=120, help="files per speaker")
    parser.add_argument("--target_mean", type=float, default=0.55, help="mean target score (non-targets: 0.05); "
                                                                         "lower: a weaker system, more turning points")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--direct", type=int, default=4, help="resamples timed by the direct approach (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    p_targets = (0.01, 0.05)

    scores, labels, enroll, test = synthetic_list(args.trials, args.speakers, args.groups, args.files, args.seed,
                                                  args.target_mean)
    start = time.perf_counter()
    ce, ct, unit = tt.trial_clusters(enroll, test, labels)
    names_s = time.perf_counter() - start
    eer = tt.compute_eer(scores, labels)[0]
    print(f"synthetic list: {args.trials:,} trials ({int(labels.sum()):,} targets), {args.speakers:,} speakers in "
          f"{args.groups} groups, {np.unique(scores).size:,} distinct scores, EER {eer:.2f}%; unit: {unit} "
          f"(clusters from {2 * args.trials:,} names in {names_s:.2f} s)")

    wall, cpu = time.perf_counter(), time.process_time()
    ci = tt.bootstrap_intervals(scores, labels, ce, ct, p_targets, n_resamples=args.resamples, seed=args.seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"bootstrap_intervals, {args.resamples} resamples: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"({1000 * wall / args.resamples:.1f} ms per resample)")
    print("  95% intervals: " + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in ci.items()))

    if args.direct:
        n = min(args.direct, args.resamples, tt.BOOTSTRAP_BLOCK)
        rng = np.random.default_rng(args.seed)
        counts = tt._draw_counts(rng, int(max(ce.max(), ct.max())) + 1, min(tt.BOOTSTRAP_BLOCK, args.resamples))
        ours = tt.bootstrap_replicates(scores, labels, ce, ct, p_targets, n_resamples=n, seed=args.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        theirs = direct(scores, labels, ce, ct, counts[:, :n], p_targets)
        t1, c1 = (time.perf_counter() - t0) / n * args.resamples, (time.process_time() - c0) / n * args.resamples
        same = np.allclose(np.stack([ours["eer_percent"] / 100, *(ours[f"min_dcf_p{p}"] for p in p_targets)]),
                           theirs, rtol=1e-9, atol=1e-12)
        print(f"direct (repeat trials, compute_metrics), scaled from {n} to {args.resamples} resamples: {t1:.1f} s "
              f"wall, {c1:.1f} s CPU; speed-up {t1 / wall:.1f}x / {c1 / max(cpu, 1e-9):.1f}x; same values: {same}")


if __name__ == "__main__":
    main()
