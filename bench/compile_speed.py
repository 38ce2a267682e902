#!/usr/bin/env python
"""torch.compile on the CPU: the DTDY models under inductor against the official formulation, side by side.

    python bench/compile_speed.py --widths quarter --iters 3 --batch 4 --frames 100   # --help for the options

For DTDY-ResNet-34 x0.25 and x0.50 (ASP) with the same weights, three contenders in one process: the official
formulation (tests/reference_dtdy.py, eager, torch.optim.Adam's loop as the official code steps), the readable model
(models/_dtdy.py) eager and the readable model under ``torch.compile`` (inductor; both step with the framework's
fused Adam). Per contender the training step (forward, backward, optimizer; a stand-in loss) and inference (eval,
no_grad), fp32, timed interleaved iteration by iteration (bench/model_speed.py's timer: medians, speed-ups the
median of per-iteration ratios against the official eager). The one-time compilation of each graph (training and
inference are two) is timed apart; inductor caches its kernels on disk, so a rerun with the same shapes compiles
faster. ``--explain`` first counts the graphs and graph breaks of each model with torch._dynamo.explain;
``--freezing`` adds an inference contender compiled with inductor's freezing (weights folded into the graph as
constants, conv + BatchNorm fused; valid only while the weights do not change, so for inference alone);
``--profile`` reports the share of the compiled training step spent in convolutions (forward and backward), the part
compilation cannot speed up.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_speed import Timer, infer, max_diff, official_adam, speedup, train_step, twins  # noqa: E402

from dtdysv.data.audio import crop_samples  # noqa: E402
from dtdysv.runtime.allocator import tune_allocator_for  # noqa: E402
from models._resnet import WIDTHS_HALF, WIDTHS_QUARTER  # noqa: E402

WIDTHS = {"quarter": WIDTHS_QUARTER, "half": WIDTHS_HALF}


def explain(model: torch.nn.Module, wave: torch.Tensor) -> None:
    """Graphs and graph breaks dynamo finds in the model's forward, with the reasons."""
    out = torch._dynamo.explain(model)(wave)
    print(f"  torch._dynamo.explain: {out.graph_count} graph(s), {out.graph_break_count} graph break(s)")
    for reason in out.break_reasons:
        frame = reason.user_stack[-1] if reason.user_stack else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        print(f"    {reason.reason.splitlines()[0]}{where}")
    torch._dynamo.reset()


CONVOLUTION_OPS = ("convolution", "conv2d", "conv1d", "mkldnn_conv", "mkldnn_convolution")


def convolution_share(fn, iters: int = 2) -> float:
    """The share of the process time of ``iters`` calls of ``fn`` spent in convolution operators (self time)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if any(op in e.key.lower() for op in CONVOLUTION_OPS))
    return conv / total


def compile_twice(model: torch.nn.Module, wave: torch.Tensor) -> tuple[float, float]:
    """Compile ``model`` in place and run its training and inference graphs once: their compile times in s."""
    model.compile()
    times = []
    for fn in (train_step(model, wave, nullcontext()), infer(model, wave, nullcontext())):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def compare(width: str, wave: torch.Tensor, args: argparse.Namespace, timer: Timer) -> None:
    ref, ours = twins(WIDTHS[width], wave[:2])
    name = f"DTDY_ResNet34_{width}"
    print(f"\n{name}")
    if args.explain:
        explain(copy.deepcopy(ours), wave)  # a copy: the forward updates BatchNorm statistics
    compiled = copy.deepcopy(ours)
    if args.compile:
        train_s, infer_s = compile_twice(compiled, wave)
        compiled.load_state_dict(ours.state_dict())  # undo the compiling training step
        print(f"  one-time compilation: training step {train_s:.0f} s, inference {infer_s:.0f} s")
        print(f"  max |compiled - official| (largest output {ref.eval()(wave).abs().max():.1f}): eval "
              f"{max_diff(ref, compiled, wave, False):.1e}, train {max_diff(ref, compiled, wave, True):.1e}")
        if args.profile:
            share = convolution_share(train_step(compiled, wave, nullcontext()))
            print(f"  convolutions: {100 * share:.0f}% of the compiled training step's operator time")
    contenders = {"official eager": ref, "readable eager": ours}
    if args.compile:
        contenders["readable compiled"] = compiled
    frozen = {}
    if args.compile and args.freezing:
        model = copy.deepcopy(ours).eval()
        with inductor_config.patch(freezing=True):  # read when the graph compiles, at its first call
            t0 = time.perf_counter()
            model.compile()
            infer(model, wave, nullcontext())()
        print(f"  one-time compilation with freezing (inference): {time.perf_counter() - t0:.0f} s")
        frozen["compiled, frozen"] = model
    rows = []
    for mode in ("train", "infer"):
        group = contenders if mode == "train" else {**contenders, **frozen}
        fns = [train_step(m, wave, nullcontext(), official_adam) if label == "official eager" and mode == "train"
               else train_step(m, wave, nullcontext()) if mode == "train" else infer(m, wave, nullcontext())
               for label, m in group.items()]
        times = timer.run(fns, args.iters)
        rows += [(mode, label, t, speedup(times[0], t), speedup(times[0], t, "cpu"))
                 for label, t in zip(group, times, strict=True)]
    print(f"  {'mode':<7}{'contender':<20}{'ms/step':>10}{'crops/s':>9}{'x official (wall)':>19}{'(cpu)':>7}")
    for mode, label, t, x_wall, x_cpu in rows:
        print(f"  {mode:<7}{label:<20}{1e3 * t.median:>10.0f}{args.batch / t.median:>9.2f}{x_wall:>19.2f}"
              f"{x_cpu:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", choices=list(WIDTHS), default=list(WIDTHS), help="DTDY widths")
    parser.add_argument("--batch", type=int, default=4, help="crops per step")
    parser.add_argument("--frames", type=int, default=100, help="crop length in frames (100: 1 s)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per contender (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--explain", action="store_true", help="count graphs and graph breaks first")
    parser.add_argument("--freezing", action="store_true", help="an inference contender compiled with freezing")
    parser.add_argument("--profile", action="store_true", help="the convolutions' share of the compiled step")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager contenders only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator_for(torch.device("cpu"))
    torch.manual_seed(0)
    wave = torch.randn(args.batch, crop_samples(args.frames))
    print(f"CPU fp32, {args.threads} threads, batch {args.batch} x {wave.shape[1]} samples, median of {args.iters} "
          f"interleaved iterations")
    timer = Timer("cpu")
    for width in args.widths:
        compare(width, wave, args, timer)


if __name__ == "__main__":
    main()
