#!/usr/bin/env python
"""Build a benchmark corpus of real voices from Debian packages that carry recorded human speech.

    python bench/realvoices/build_corpus.py --out data/realvoices          # about 95 MB of packages, a few minutes

It needs a Debian or Ubuntu machine: ``apt-get download`` (no root needed) fetches the packages of Debian main named in
bench/realvoices/sources.py (ktuberling-data, klettres-data, gcin-voice, alsa-utils) into ``--cache`` (default
``data/realvoices_cache``; a rerun reuses what is there) and ``dpkg-deb -x`` unpacks them. Nothing of the packages is
part of this repository. The licences of the recordings, read from each package's copyright file (the build refuses
any other): GPL-2+ (ktuberling-data, klettres-data), GPL-2 (alsa-utils), GPL-3 or LGPL-3 and CC-BY-3 (gcin-voice).

It writes, under ``--out``:

    wav/<speaker>/<session>/<nnnnn>.wav   16 kHz mono 16-bit; silence trimmed; clips under --min_seconds dropped
    train_list.txt          '<speaker> <path under wav/>' of the training speakers, validation speakers left out
    train_full_list.txt     the same with the validation speakers (to train on once the recipe is tuned)
    val_trials.txt          '<label> <enroll> <test>' over the validation speakers (held out of train_list.txt)
    test_trials.txt         the same over the test speakers, disjoint from every training speaker
    manifest.json, MANIFEST.md   per package: version, licence, what the recordings are, how a voice was
                            identified, its speakers and files per speaker; the splits and trial lists

A speaker is a unit of sources.py (a language folder, or a voice the package names), split further by recording
format (sample rate and channels mark recording sessions, which in these folders are often different people); a file
copied into two folders counts once; a unit whose files' median F0s spread too widely (--max_pitch_spread, a
listen-free sign of two voices in one folder) or that keeps fewer than --min_files clips is left out. Speakers are
split by group (corpus.py): the units that may be one person never straddle splits and never meet in a non-target
trial. Trial lists are balanced (as many target as non-target trials) and deterministic for a given --seed. Give
train_path and test_path ``<out>/wav`` to trainSpeakerNet.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.realvoices.corpus import (  # noqa: E402
    SPLITS,
    assign_splits,
    balanced_trials,
    join_clips,
    median_f0,
    pitch_spread,
    trim_silence,
)
from bench.realvoices.sources import PACKAGES, Unit, copyright_entry, deb_field, deb_of, fetch, safe_name  # noqa: E402
from dtdysv.data.audio import SAMPLE_RATE, read_audio, write_wav  # noqa: E402
from dtdysv.errors import UserError  # noqa: E402
from dtdysv.runtime.fileio import atomic_write_text  # noqa: E402

log = logging.getLogger("build_corpus")
BUILDER_VERSION = 1
MAX_PITCH_SPREAD = 1.35  # the quartile ratio of per-file median F0s above which a folder holds several voices


def split_by_format(unit: Unit) -> list[Unit]:
    """One unit per recording format (sample rate, channels) of its files: formats mark recording sessions, which
    in a folder of unnamed speakers may be different people. The parts keep the unit's group."""
    formats: dict[tuple[int, int], list[Path]] = {}
    for path in unit.files:
        info = soundfile.info(str(path))
        formats.setdefault((info.samplerate, info.channels), []).append(path)
    if len(formats) == 1:
        return [unit]
    return [Unit(f"{unit.name}-{rate}hz{'-stereo' if channels == 2 else ''}", unit.group, unit.package,
                 unit.language, unit.session, unit.copyright_files, tuple(files), unit.join_short)
            for (rate, channels), files in sorted(formats.items())]


def clips_of(unit: Unit, seen: set[str], min_seconds: float) -> tuple[list[np.ndarray], Counter]:
    """The unit's usable clips at 16 kHz (trimmed; short syllables joined where the unit says so) and the count of
    files left out by reason. ``seen`` holds the digests of files already taken (a file copied into two folders
    counts once)."""
    dropped: Counter = Counter()
    clips = []
    for path in unit.files:
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest in seen:
            dropped["duplicate of another file"] += 1
            continue
        seen.add(digest)
        clips.append(trim_silence(read_audio(path, resample=True)))
    shortest = int(min_seconds * SAMPLE_RATE)
    if unit.join_short:
        clips = [c for c in clips if len(c) >= shortest] + join_clips([c for c in clips if 0 < len(c) < shortest])
    kept = [c for c in clips if len(c) >= shortest]
    dropped[f"shorter than {min_seconds:g} s"] += len(clips) - len(kept)
    return kept, dropped


def build(out: Path, cache: Path, packages: list[str], seed: int, test_fraction: float, val_fraction: float,
          test_trials: int, val_trials: int, min_seconds: float, min_files: int,
          max_pitch_spread: float) -> dict[str, Any]:
    wav_root = out / "wav"
    if wav_root.exists() and not (out / "manifest.json").is_file():
        raise UserError(f"'{wav_root}' exists without '{out / 'manifest.json'}': it is not a corpus of this script; "
                        f"choose another --out.")
    shutil.rmtree(wav_root, ignore_errors=True)
    seen: set[str] = set()
    records: list[dict[str, Any]] = []
    package_info = []
    for name in packages:
        source = PACKAGES[name]
        root = fetch(name, cache)
        deb = deb_of(name, cache)
        units = [part for unit in source.find(root) for part in split_by_format(unit)]
        licences = {u.copyright_files: copyright_entry(root, name, u.copyright_files) for u in units}
        package_info.append({"package": name, "version": deb_field(deb, "Version"), "deb": deb.name,
                             "deb_bytes": deb.stat().st_size,
                             "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(), "what": source.what,
                             "speaker_identified_by": source.identified, "licences": list(licences.values()),
                             "left_out_folders": source.dropped})
        for unit in tqdm(units, desc=name, unit="speaker"):
            clips, dropped = clips_of(unit, seen, min_seconds)
            record = {"speaker": unit.name, "group": unit.group, "package": name, "language": unit.language,
                      "licence": licences[unit.copyright_files]["licence"], "source_files": len(unit.files),
                      "left_out": dict(dropped), "files": [], "seconds": 0.0}
            f0s = [median_f0(c) for c in clips]
            spread = pitch_spread(f0s)
            record.update(median_f0_hz=_rounded(np.nanmedian(f0s) if np.isfinite(f0s).any() else np.nan, 1),
                          pitch_spread=_rounded(spread, 3))
            if len(clips) < min_files:
                record["left_out_speaker"] = f"{len(clips)} usable files, fewer than --min_files {min_files}"
            elif max_pitch_spread and spread > max_pitch_spread:
                record["left_out_speaker"] = (f"pitch spread {spread:.2f} > --max_pitch_spread {max_pitch_spread:g}: "
                                              f"the files' median F0s suggest more than one voice")
            else:
                speaker = safe_name(unit.name)
                for n, clip in enumerate(clips, start=1):
                    rel = f"{speaker}/{unit.session}/{n:05d}.wav"
                    write_wav(wav_root / rel, clip)
                    record["files"].append(rel)
                record["seconds"] = round(sum(len(c) for c in clips) / SAMPLE_RATE, 2)
            records.append(record)
    kept = [r for r in records if r["files"]]
    groups: dict[str, list[str]] = {}
    seconds: Counter = Counter()
    for r in kept:
        groups.setdefault(r["group"], []).append(r["speaker"])
        seconds[r["group"]] += r["seconds"]
    split_of = assign_splits(groups, test_fraction, val_fraction, seed, seconds)
    for r in records:
        r["split"] = split_of.get(r["speaker"], "")
    files_of = {r["speaker"]: r["files"] for r in kept}
    group_of = {r["speaker"]: r["group"] for r in kept}

    def in_split(*splits: str) -> dict[str, list[str]]:
        return {s: f for s, f in files_of.items() if split_of[s] in splits}

    def train_lines(*splits: str) -> str:
        return "".join(f"{s} {rel}\n" for s, files in sorted(in_split(*splits).items()) for rel in files)

    atomic_write_text(out / "train_list.txt", train_lines("train"))
    atomic_write_text(out / "train_full_list.txt", train_lines("train", "val"))
    trials = {"val": balanced_trials(in_split("val"), group_of, val_trials, seed),
              "test": balanced_trials(in_split("test"), group_of, test_trials, seed + 1)}
    for split, rows in trials.items():
        atomic_write_text(out / f"{split}_trials.txt", "".join(f"{label} {e} {t}\n" for label, e, t in rows))
    manifest = {"builder_version": BUILDER_VERSION,
                "settings": {"seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                             "test_trials": test_trials, "val_trials": val_trials, "min_seconds": min_seconds,
                             "min_files": min_files, "max_pitch_spread": max_pitch_spread,
                             "sample_rate": SAMPLE_RATE},
                "packages": package_info, "speakers": records, "splits": statistics(kept, split_of, trials)}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / "MANIFEST.md", manifest_markdown(manifest))
    return manifest


def _rounded(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def statistics(kept: list[dict[str, Any]], split_of: dict[str, str],
               trials: dict[str, list[tuple[int, str, str]]]) -> dict[str, Any]:
    out = {}
    for split in SPLITS:
        rows = [r for r in kept if split_of[r["speaker"]] == split]
        out[split] = {"speakers": len(rows), "groups": len({r["group"] for r in rows}),
                      "files": sum(len(r["files"]) for r in rows),
                      "hours": round(sum(r["seconds"] for r in rows) / 3600, 3)}
        if split in trials:
            out[split].update(trials=len(trials[split]), target_trials=sum(t[0] for t in trials[split]))
    return out


def manifest_markdown(manifest: dict[str, Any]) -> str:
    lines = ["# Real-voice corpus", "",
             "Built by `bench/realvoices/build_corpus.py` from Debian packages (nothing of them is in the repository). "
             "A speaker is one unit below; speakers of one group may be one person: they share a split and never "
             "meet in a non-target trial. Non-target trials therefore always pair two languages or recording "
             "set-ups as well as two voices, which makes them easier than in a corpus of one language.", "",
             "| split | speakers | groups | files | hours | trials (target) |", "|---|---:|---:|---:|---:|---|"]
    for split, s in manifest["splits"].items():
        trials = f"{s['trials']:,} ({s['target_trials']:,})" if "trials" in s else ""
        lines.append(f"| {split} | {s['speakers']} | {s['groups']} | {s['files']:,} | {s['hours']:.2f} | {trials} |")
    lines += ["", "## Packages", ""]
    for p in manifest["packages"]:
        speakers = [r for r in manifest["speakers"] if r["package"] == p["package"]]
        used = [r for r in speakers if r["files"]]
        counts = ", ".join(f"{r['speaker']} {len(r['files'])}" for r in used)
        lines += [f"### {p['package']} {p['version']}", "",
                  f"- recordings: {p['what']}",
                  "- licence: " + "; ".join(f"{entry['licence']} (`Files: {entry['files']}`, {entry['copyright']})"
                                             for entry in p["licences"]),
                  f"- speaker identified by: {p['speaker_identified_by']}",
                  f"- speakers: {len(used)}; files per speaker: {counts}"]
        for folder, why in p["left_out_folders"].items():
            lines.append(f"- left out: folder `{folder}`, {why}")
        for r in speakers:
            if not r["files"]:
                lines.append(f"- left out: {r['speaker']}, {r.get('left_out_speaker', '')}")
        lines.append("")
    lines += ["## Speakers", "",
              "| speaker | group | split | files | minutes | median F0 Hz | pitch spread | licence |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in manifest["speakers"]:
        split = r["split"] or "left out"
        lines.append(f"| {r['speaker']} | {r['group']} | {split} | {len(r['files'])} | {r['seconds'] / 60:.1f} | "
                     f"{r['median_f0_hz'] or ''} | {r['pitch_spread'] or ''} | {r['licence']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/realvoices"), help="the corpus folder")
    parser.add_argument("--cache", type=Path, default=Path("data/realvoices_cache"),
                        help="downloaded and unpacked packages (reused by a rerun)")
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES), choices=list(PACKAGES), metavar="PACKAGE",
                        help=f"the packages to use (default: all: {', '.join(PACKAGES)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the speaker split and the trial lists")
    parser.add_argument("--test_fraction", type=float, default=0.3, help="share of the speakers in the test split")
    parser.add_argument("--val_fraction", type=float, default=0.15, help="share held out of training for validation")
    parser.add_argument("--test_trials", type=int, default=6000, help="trials in test_trials.txt (half target)")
    parser.add_argument("--val_trials", type=int, default=2000, help="trials in val_trials.txt (half target)")
    parser.add_argument("--min_seconds", type=float, default=0.5, help="shortest clip kept, after trimming silence")
    parser.add_argument("--min_files", type=int, default=8, help="fewest usable files for a speaker to be kept")
    parser.add_argument("--max_pitch_spread", type=float, default=MAX_PITCH_SPREAD,
                        help="leave out a speaker whose files' median F0s have a larger upper/lower quartile ratio "
                             f"(several voices in one folder; default {MAX_PITCH_SPREAD}, 0: keep all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        manifest = build(args.out, args.cache, args.packages, args.seed, args.test_fraction, args.val_fraction,
                         args.test_trials, args.val_trials, args.min_seconds, args.min_files, args.max_pitch_spread)
    except UserError as err:
        log.error("%s", err)
        return 2
    print(manifest_markdown(manifest).split("\n## ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
