#!/usr/bin/env python
"""One command, no network, that shows on a lent GPU that training, evaluation and export are right, and how fast.

    python bench/gpu_check.py                        # CUDA: at most 8 minutes, every local GPU for the DDP runs
    python bench/gpu_check.py --device cpu --quick   # the same steps at toy sizes on the CPU (gloo), ~3 minutes

Writes ``gpu_report.md`` and ``gpu_report.json`` into ``--out`` (default exps/gpu_check) and prints the report.
Sections, in this order (each in its own try/except: a failure is recorded and the next section runs; a global
deadline skips what no longer fits, and says so):

1. ``corpus``: a small synthetic corpus with ``dataprep.py --make_demo``.
2. ``ddp``: ``torchrun --standalone --nproc_per_node N trainSpeakerNet.py --config configs/demo.yaml`` for one
   epoch and its evaluation, ``--mixedprec`` (bf16 where the GPU supports it; fp32 on the CPU, where bf16 is
   emulated without AVX-512 and ten times slower): the loss is finite, the scores are written.
3. ``ddp_fp16``: the same with ``--mixedprec_dtype fp16``: besides, the gradient scaler skipped steps only during its
   warm-up (its skipped steps are the first ones of the run). Not run on the CPU (no fp16 there).
4. ``eval_parity``: ``--eval`` of the checkpoint of 2 on the device equals the CPU's scores to 1e-4 (fp32, TF32
   off with NVIDIA_TF32_OVERRIDE=0; the default TF32 run's difference is reported beside). With ``--device cpu``
   the device run is the readable model (``--no-fast_cpu_inference``) against the folded CPU path.
5. ``export``: ``export.py`` of that checkpoint passes its parity checks (TorchScript and ONNX).
6. ``throughput``: per model, training crops/s (forward, backward, fused Adam; a stand-in loss) at bf16 and fp16,
   eager and under torch.compile, peak memory, inference crops/s, the multiply-accumulates per crop counted with
   torch.utils.flop_counter, and the achieved TFLOP/s as a share of the GPU's dense bf16 peak. Eager figures
   first, then compiled ones while the deadline allows (each compilation takes a minute or more).

The exit status is 0 when every check that ran passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from model_speed import build, calibrate  # noqa: E402

from dtdysv.data.audio import crop_samples  # noqa: E402

MODELS = ("DTDY_ResNet34_half", "DTDY_ResNet34_quarter", "ResNet34_half", "ResNet34_quarter", "ECAPA_TDNN_c512",
          "CAMPPlus")  # the ResNets with ASP pooling, the baselines at their papers' settings (model_speed.build)
# Dense bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets (their sparsity figures halved), keyed by a part
# of torch.cuda.get_device_name(); the first match wins (H100 SXM reports "NVIDIA H100 80GB HBM3").
PEAK_BF16_TFLOPS = (("H200 NVL", 835.5), ("H200", 989.5), ("H100 NVL", 835.5), ("H100 PCIe", 756.5),
                    ("H100", 989.5))
EVAL_TOLERANCE = 1e-4
SCALER_LINE = r"fp16 gradient scaler skipped (\d+) of (\d+) steps(?: \(steps ([\d, ]+)\))?; scale (\S+)"


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the full check on a GPU, or ``--quick`` toy sizes."""

    budget_s: float  # the global deadline
    corpus: tuple[str, ...]  # dataprep.py --make_demo options
    train: tuple[str, ...]  # trainSpeakerNet.py options on top of configs/demo.yaml
    batch: int  # crops per throughput step
    frames: int  # crop length of the throughput steps
    warmup: int
    iters: int
    compile_s: float  # the time a compilation is expected to need; compiled runs start only with this much left


# About 40 steps per epoch at a tenth of the demo's learning rate in both: the eval-mode network must be well
# conditioned for two code paths to agree to 1e-4. After one short epoch at the demo's rate, BatchNorm's running
# statistics lag far behind the moving weights, and the embeddings (norms in the thousands) change by 1e-3 for input
# changes of 1e-6; at lr 2e-4 by 1e-4, with norms in the tens.
TRAIN = ("--lr", "0.0002")
FULL = Sizes(480, ("--demo_train_speakers", "50", "--demo_utts", "8", "--demo_test_speakers", "10",
                   "--demo_test_utts", "4", "--demo_videos", "2", "--demo_trials", "200", "--demo_min_seconds", "2",
                   "--demo_max_seconds", "2.5"),
             (*TRAIN, "--batch_size", "5", "--nDataLoaderThread", "4"), batch=128, frames=200, warmup=3, iters=10,
             compile_s=75)
QUICK = Sizes(170, ("--demo_train_speakers", "6", "--demo_utts", "28", "--demo_test_speakers", "3",
                    "--demo_test_utts", "2", "--demo_videos", "2", "--demo_trials", "12", "--demo_min_seconds", "1",
                    "--demo_max_seconds", "1.1"),
              (*TRAIN, "--batch_size", "2", "--max_frames", "20", "--eval_frames", "60", "--num_eval", "2",
               "--nDataLoaderThread", "0"), batch=2, frames=30, warmup=1, iters=1, compile_s=600)


@dataclass
class Section:
    name: str
    status: str = "skipped"  # passed, failed (a check), error (an exception), skipped (deadline, not applicable)
    seconds: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "passed": bool(ok), "detail": detail})


class Run:
    """The state of one check: options, deadline, output folder, the sections so far and what they pass on."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.start = time.monotonic()
        self.deadline = self.start + (args.minutes * 60 if args.minutes else self.sizes.budget_s)
        self.out = Path(args.out).resolve()
        self.cuda = args.device == "cuda"
        self.sections: list[Section] = []
        self.shared: dict[str, Any] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, body: Callable[[Section], None], needs_s: float = 10.0) -> None:
        sec = Section(name)
        self.sections.append(sec)
        if self.left() < needs_s:
            sec.note = f"deadline: {self.left():.0f} s left, needs about {needs_s:.0f} s"
            return
        t0 = time.monotonic()
        try:
            body(sec)
            sec.status = "passed" if all(c["passed"] for c in sec.checks) else "failed"
        except Exception as err:  # a failing section is recorded; the next one runs
            sec.status, sec.note = "error", f"{type(err).__name__}: {err}"
            sec.data["traceback"] = traceback.format_exc()[-3000:]
        sec.seconds = time.monotonic() - t0
        print(f"[gpu_check] {name}: {sec.status} in {sec.seconds:.0f} s {sec.note}", flush=True)

    def command(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> str:
        """Run a repository command with the time left as its timeout; its output goes to ``<out>/<log_name>``."""
        timeout = max(5.0, self.left() - 5)
        if not self.cuda:  # one thread per process: OpenMP threads that wait for busy cores slow a step tenfold
            env = {"OMP_NUM_THREADS": "1", **(env or {})}
        # A session of its own, so that a timeout ends torchrun's workers too, not only the launcher.
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            (self.out / log_name).write_text(f"$ {' '.join(argv)}\n{stdout}\n{stderr}")
            raise TimeoutError(f"{' '.join(argv[1:4])}... ran past the deadline ({timeout:.0f} s): "
                               f"{stderr[-1500:]}") from None
        (self.out / log_name).write_text(f"$ {' '.join(argv)}\n{stdout}\n{stderr}")
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode} of {' '.join(argv[1:4])}...: {stderr[-1500:]}")
        return stderr


def demo_options(run: Run, save: Path, *extra: str) -> list[str]:
    corpus = run.out / "corpus"
    device = [] if run.cuda else ["--device", "cpu"]
    return ["trainSpeakerNet.py", "--config", "configs/demo.yaml", "--max_epoch", "1", "--test_interval", "1",
            "--train_list", str(corpus / "train_list.txt"), "--train_path", str(corpus / "train" / "wav"),
            "--test_list", str(corpus / "test_list.txt"), "--test_path", str(corpus / "test" / "wav"),
            "--save_path", str(save), "--no-tensorboard", "--log_interval", "5", *device, *run.sizes.train, *extra]


def make_corpus(run: Run, sec: Section) -> None:
    run.command([sys.executable, "dataprep.py", "--make_demo", str(run.out / "corpus"), *run.sizes.corpus],
                "corpus.log")
    trials = (run.out / "corpus" / "test_list.txt").read_text().splitlines()
    sec.data["trials"] = len(trials)
    sec.check("corpus written", len(trials) > 0, f"{len(trials)} trials")


def ddp_train(run: Run, sec: Section, dtype: str) -> None:
    """One demo epoch and its evaluation under torchrun over every local GPU (two gloo processes on the CPU);
    ``dtype``: auto (--mixedprec's default) or fp16."""
    nproc = torch.cuda.device_count() if run.cuda else 2
    name = "ddp" if dtype == "auto" else f"ddp_{dtype}"
    save = run.out / name
    extra = ["--mixedprec", "--mixedprec_dtype", dtype] if run.cuda else []
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    t0 = time.monotonic()
    run.command([*torchrun, *demo_options(run, save, *extra)], f"{name}.log")
    log = (save / "result" / "train.log").read_text()
    sec.data.update(processes=nproc, wall_s=round(time.monotonic() - t0, 1))
    losses = [float(v) for v in re.findall(r"epoch 1: loss (\S+),", log)]
    sec.check("loss finite", len(losses) == 1 and math.isfinite(losses[0]), f"epoch 1 loss {losses}")
    backend = "nccl" if run.cuda else "gloo"
    sec.check(f"{nproc} rank(s) over {backend}", nproc == 1 or f"({backend}" in (run.out / f"{name}.log").read_text(),
              f"{nproc} processes")
    scores = save / "result" / "test_list" / "scores.txt"
    lines = scores.read_text().splitlines() if scores.is_file() else []
    sec.check("scores written", len(lines) == run.shared.get("trials", -1), f"{len(lines)} scores")
    metrics = json.loads((save / "result" / "test_list" / "metrics.json").read_text())
    sec.data["eer_percent"] = metrics["variants"]["raw"].get("eer_percent")
    if dtype == "fp16":
        found = re.search(SCALER_LINE, log)
        if found is None:
            sec.check("scaler skips only in its warm-up", False, "no scaler line in train.log")
        else:
            skipped = [int(s) for s in found[3].split(", ")] if found[3] else []
            total = int(found[2])
            sec.data.update(skipped_steps=skipped, steps=total, final_scale=float(found[4]))
            warmup_only = skipped == list(range(1, len(skipped) + 1)) and len(skipped) < total
            sec.check("scaler skips only in its warm-up", warmup_only,
                      f"skipped steps {skipped} of {total}, scale {found[4]}")
    checkpoint = save / "model" / "model000000001.model"
    sec.check("checkpoint written", checkpoint.is_file(), str(checkpoint.relative_to(run.out)))
    run.shared.setdefault("checkpoint", checkpoint)


def read_scores(path: Path) -> np.ndarray:
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines()])


def eval_parity(run: Run, sec: Section) -> None:
    """--eval of the trained checkpoint on the device and on the CPU: the scores agree to EVAL_TOLERANCE."""
    checkpoint = run.shared["checkpoint"]
    config = checkpoint.parent.parent / "config.yaml"

    def evaluate(name: str, *extra: str, env: dict[str, str] | None = None) -> np.ndarray:
        save = run.out / f"eval_{name}"
        argv = [sys.executable, "trainSpeakerNet.py", "--config", str(config), "--eval", "--initial_model",
                str(checkpoint), "--save_path", str(save), "--no-mixedprec", "--no-tensorboard", *extra]
        run.command(argv, f"eval_{name}.log", env)
        return read_scores(save / "result" / "test_list" / "scores.txt")

    cpu = evaluate("cpu", "--device", "cpu")
    if run.cuda:
        device = evaluate("cuda_fp32", "--device", "cuda", env={"NVIDIA_TF32_OVERRIDE": "0"})
        tf32 = evaluate("cuda_tf32", "--device", "cuda")
        sec.data["max_abs_diff_tf32_default"] = float(np.abs(tf32 - cpu).max())
    else:
        device = evaluate("cpu_readable", "--device", "cpu", "--no-fast_cpu_inference")
    diff = float(np.abs(device - cpu).max())
    sec.data.update(max_abs_diff=diff, trials=len(cpu))
    label = "GPU (fp32, TF32 off)" if run.cuda else "readable CPU model"
    sec.check(f"{label} scores equal the CPU's", diff <= EVAL_TOLERANCE, f"max |diff| {diff:.2e} over {len(cpu)}")


def export_parity(run: Run, sec: Section) -> None:
    out = run.out / "export"
    run.command([sys.executable, "export.py", "--initial_model", str(run.shared["checkpoint"]), "--out", str(out)],
                "export.log")
    parity = json.loads((out / "export.json").read_text())["parity"]
    for fmt, result in parity.items():
        sec.data[fmt] = {key: result[key] for key in ("embedding_relative_error", "score_error")}
        sec.check(f"{fmt} parity", bool(result["passed"]), f"embeddings {result['embedding_relative_error']:.2e} "
                  f"(relative), pair scores {result['score_error']:.2e}")


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def count_flops(model: torch.nn.Module, wave: torch.Tensor) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per crop of ``wave`` (B, samples), as FlopCounterMode counts them
    (matrix products and convolutions: 2 per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(wave)
    forward = counter.get_total_flops()
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(wave).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return forward / wave.shape[0], counter.get_total_flops() / wave.shape[0]


def timed(fn: Callable[[], None], crops: int, warmup: int, iters: int, device: torch.device) -> dict[str, float]:
    """Crops/s of ``iters`` calls after ``warmup`` (the first call, compilation included, timed apart), and the
    peak memory on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    out = {"crops_per_s": crops * iters / (time.perf_counter() - t0), "first_call_s": first}
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def train_fn(model: torch.nn.Module, wave: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    """One training step with the framework's precision policy: autocast, a gradient scaler for fp16, fused Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
    scaler = torch.amp.GradScaler(wave.device.type, enabled=dtype == torch.float16)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(wave.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(wave)
        scaler.scale(out.float().square().mean()).backward()
        scaler.step(opt)
        scaler.update()
    return step


def infer_fn(model: torch.nn.Module, wave: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
    def forward() -> None:
        model.eval()
        with torch.no_grad(), torch.autocast(wave.device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(wave)
    return forward


def throughput(run: Run, sec: Section) -> None:
    """Eager figures of every model first; compiled ones while the deadline allows."""
    device = torch.device("cuda" if run.cuda else "cpu")
    s = run.sizes
    # On the CPU fp32: CPUs without bf16 instructions emulate it, ten times slower (and fp16 autocast is partial).
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16} if run.cuda else {"fp32": torch.float32}
    peak = peak_tflops(device)
    first = next(iter(dtypes))
    sec.data.update(device=torch.cuda.get_device_name(device) if run.cuda else "cpu", batch=s.batch,
                    dtypes=list(dtypes), samples=crop_samples(s.frames), peak_bf16_tflops=peak if peak else "unknown",
                    models={})
    wave = torch.randn(s.batch, crop_samples(s.frames), device=device)
    models = {}
    for name in MODELS:
        model = build(name)
        calibrate(model, wave[:2].cpu())
        models[name] = model.to(device)
        forward, train = count_flops(models[name], wave[:2])
        sec.data["models"][name] = {"params": sum(p.numel() for p in model.parameters()),
                                    "gmac_per_crop": forward / 2e9, "train_gflop_per_crop": train / 1e9}
    plan: list[tuple[str, str, str, bool]] = [(n, "train", d, False) for n in MODELS for d in dtypes]
    plan += [(n, "infer", d, False) for n in MODELS for d in dtypes]
    plan += [(n, "train", d, True) for d in dtypes for n in MODELS] + [(n, "infer", first, True) for n in MODELS]
    skipped: list[tuple[str, str]] = []
    for name, mode, dtype, compiled in plan:
        key = f"{mode}_{dtype}_{'compiled' if compiled else 'eager'}"
        if run.left() < (s.compile_s if compiled else 10):
            skipped.append((name, key))
            continue
        model = torch.compile(models[name]) if compiled else models[name]
        fn = (train_fn if mode == "train" else infer_fn)(model, wave, dtypes[dtype])
        result = timed(fn, s.batch, s.warmup, s.iters, device)
        entry = sec.data["models"][name]
        entry[key] = result
        flops = entry["train_gflop_per_crop" if mode == "train" else "gmac_per_crop"] * (1 if mode == "train" else 2)
        result["tflops"] = flops * result["crops_per_s"] / 1e3
        if peak:
            result["share_of_peak"] = result["tflops"] / peak
    if skipped:
        kinds = Counter(key for _, key in skipped)
        why = "a CPU compiles for minutes: bench/compile_speed.py" if run.args.quick else "not enough time left"
        sec.note = f"not started: {', '.join(f'{k} x{n}' for k, n in kinds.items())} ({why})"
    sec.check("every model trained and embedded (eager)", all(
        f"train_{d}_eager" in m and f"infer_{d}_eager" in m for m in sec.data["models"].values() for d in dtypes),
        f"{len(MODELS)} models")


def fmt_rate(entry: dict[str, Any], key: str) -> str:
    result = entry.get(key)
    return f"{result['crops_per_s']:.1f}" if result else "-"


def throughput_row(name: str, e: dict[str, Any], dtypes: list[str]) -> str:
    trains = [e[k] for k in e if k.startswith("train_") and isinstance(e[k], dict)]
    best = max(trains, key=lambda r: r["tflops"]) if trains else None
    share = f"{100 * best['share_of_peak']:.1f}%" if best and "share_of_peak" in best else "unknown"
    mem = e.get(f"train_{dtypes[0]}_eager", {}).get("peak_mib")
    cells = [name, f"{e['params'] / 1e6:.2f}M", f"{e['gmac_per_crop']:.2f}"]
    cells += [fmt_rate(e, f"train_{d}_{kind}") for kind in ("eager", "compiled") for d in dtypes]
    cells += [f"{mem:.0f}" if mem else "-"]
    cells += [fmt_rate(e, f"infer_{d}_eager") for d in dtypes] + [fmt_rate(e, f"infer_{dtypes[0]}_compiled")]
    cells += [f"{best['tflops']:.2f}" if best else "-", share if best else "-"]
    return "| " + " | ".join(cells) + " |"


def throughput_header(dtypes: list[str]) -> list[str]:
    cells = ["model", "params", "GMAC/crop"] + [f"train {d}{' compiled' if kind == 'compiled' else ''}"
                                                for kind in ("eager", "compiled") for d in dtypes]
    cells += [f"peak MiB ({dtypes[0]} train)"] + [f"infer {d}" for d in dtypes] + [f"infer {dtypes[0]} compiled"]
    cells += ["TFLOP/s (best train)", "share of bf16 peak"]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def report_markdown(run: Run, env: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"{env['device']}, torch {env['torch']}, commit {env['commit']}, "
             f"{env['total_s']:.0f} s of a {env['budget_s']:.0f}-s budget{' (quick)' if run.args.quick else ''}", "",
             "| section | status | s | check | result | detail |", "|---|---|---|---|---|---|"]
    for sec in run.sections:
        rows = sec.checks or [{"check": "", "passed": None, "detail": sec.note}]
        for i, c in enumerate(rows):
            head = f"| {sec.name} | {sec.status} | {sec.seconds:.0f} |" if i == 0 else "| | | |"
            mark = "" if c["passed"] is None else ("pass" if c["passed"] else "FAIL")
            detail = " ".join(str(c["detail"]).split())  # one table row
            lines.append(f"{head} {c['check']} | {mark} | {detail[:300]}{'...' if len(detail) > 300 else ''} |")
    notes = [f"- {sec.name}: {sec.note}" for sec in run.sections if sec.note and sec.checks]
    lines += ["", *notes] if notes else []
    tp = next((sec for sec in run.sections if sec.name == "throughput" and sec.data.get("models")), None)
    if tp is not None:
        d = tp.data
        lines += ["", f"## Throughput, crops/s ({d['device']}, batch {d['batch']} x {d['samples']} samples; dense bf16 "
                  f"peak {d['peak_bf16_tflops']} TFLOP/s)", "", *throughput_header(d["dtypes"])]
        lines += [throughput_row(name, e, d["dtypes"]) for name, e in d["models"].items()]
    errors = [f"### {sec.name}\n\n```\n{sec.data['traceback']}\n```" for sec in run.sections if "traceback" in sec.data]
    return "\n".join(lines + (["", "## Errors", "", *errors] if errors else [])) + "\n"


def environment(run: Run) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    device = torch.cuda.get_device_name(0) if run.cuda else f"CPU ({os.cpu_count()} cores)"
    return {"device": device, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "commit": commit.stdout.strip() or "unknown",
            "bf16_supported": bool(run.cuda and torch.cuda.is_bf16_supported(including_emulation=False)),
            "budget_s": run.deadline - run.start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="exps/gpu_check", help="folder of gpu_report.md/.json and the logs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (NCCL) or cpu (gloo)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (for the CPU and the tests)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="the global deadline in minutes (default 8, 2.8 with --quick)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --device cpu --quick for the CPU version", file=sys.stderr)
        return 2
    run = Run(args)
    run.out.mkdir(parents=True, exist_ok=True)
    if not run.cuda:
        torch.set_num_threads(1)  # as the commands' processes (Run.command)
    env = environment(run)
    run.section("corpus", lambda sec: make_corpus(run, sec), needs_s=20)
    run.shared["trials"] = run.sections[-1].data.get("trials", -1)
    run.section("ddp", lambda sec: ddp_train(run, sec, "auto"), needs_s=30)
    if run.cuda:
        run.section("ddp_fp16", lambda sec: ddp_train(run, sec, "fp16"), needs_s=30)
    else:
        run.sections.append(Section("ddp_fp16", note="not applicable on the CPU (no fp16 autocast)"))
    if "checkpoint" in run.shared:
        run.section("eval_parity", lambda sec: eval_parity(run, sec), needs_s=20)
        run.section("export", lambda sec: export_parity(run, sec), needs_s=20)
    else:
        run.sections += [Section(name, note="no checkpoint: the ddp section did not finish")
                         for name in ("eval_parity", "export")]
    run.section("throughput", lambda sec: throughput(run, sec), needs_s=20)
    env["total_s"] = time.monotonic() - run.start
    report = report_markdown(run, env)
    (run.out / "gpu_report.md").write_text(report)
    sections = [{**sec.__dict__, "data": {k: v for k, v in sec.data.items()}} for sec in run.sections]
    (run.out / "gpu_report.json").write_text(json.dumps({"environment": env, "sections": sections}, indent=2,
                                                        default=str) + "\n")
    print(report)
    failed = [sec.name for sec in run.sections if sec.status in ("failed", "error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
