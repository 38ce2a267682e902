"""Speed of the model zoo, and of each DTDY formulation against another, side by side with the same weights.

    python bench/model_speed.py --device cpu --iters 5      # --help for the options; docs/benchmarks.md

Per model: one training step (forward, backward, Adam step; the loss is a stand-in, the loss head is not part of
the model) and inference (eval, no_grad) on crops of 32,240 samples (200 frames). Comparisons:

- the readable DTDY model (models/_dtdy.py, what training, GPUs and export run) against the straightforward
  formulation of the official code (tests/reference_dtdy.py), training step and inference; with ``--compile``
  also the readable model under torch.compile (the one-time compilation reported apart);
- on CPU, the inference path of models/_dtdy_cpu.py (``fast_cpu_inference``) against the readable model;
- per DTDY layer of the x0.50 net, readable against reference and the folded path against readable.

Our models step with the framework's optimizer (optimizer/adam.py, fused Adam), the reference with
torch.optim.Adam's loop, as the official code does. Contenders of one comparison run interleaved, iteration by
iteration, in one process, so that load from other processes hits them alike; times are medians, speed-ups the
median of the per-iteration ratios, wall clock and CPU (process) time. fp32 on CPU, where malloc is tuned as for
CPU runs (allocator.py); on CUDA autocast bf16 (fp16 where bf16 is missing), with the peak memory per contender.
The file runs past 300 lines because its three comparisons share one timer, one model setup and one set of
conventions, and a benchmark reads best as one script.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtdysv.data.audio import crop_samples  # noqa: E402
from dtdysv.runtime.allocator import tune_allocator_for  # noqa: E402
from models import _dtdy_cpu  # noqa: E402
from models._dtdy import DTDYConv2d  # noqa: E402
from models._official import convert_official_checkpoint  # noqa: E402
from models._resnet import RESNET34_DEPTHS, WIDTHS_HALF, WIDTHS_QUARTER  # noqa: E402
from optimizer.adam import Optimizer as FrameworkAdam  # noqa: E402
from tests.reference_dtdy import ReferenceDTDYConv2d, ReferenceResNet  # noqa: E402

MODELS = {"ResNet34_quarter": None, "ResNet34_half": None,
          "DTDY_ResNet34_quarter": WIDTHS_QUARTER, "DTDY_ResNet34_half": WIDTHS_HALF,
          "ECAPA_TDNN_c512": None, "ECAPA_TDNN_c1024": None, "CAMPPlus": None}
# the baselines at their papers' settings (pooling, n_mels, nOut); the ResNets at ENCODER_TYPE, N_MELS, NOUT
BASELINE_SETTINGS = {"ECAPA_TDNN_c512": ("ASP", 80, 192), "ECAPA_TDNN_c1024": ("ASP", 80, 192),
                     "CAMPPlus": ("STP", 80, 512)}
# (C_in, C_out, kernel, stride, F, T) of the DTDY layers of the x0.50 net at 64 mels and 202 frames
LAYERS = [(32, 32, 3, 1, 32, 202), (32, 64, 3, 2, 32, 202), (32, 64, 1, 2, 32, 202), (64, 64, 3, 1, 16, 101),
          (64, 128, 3, 2, 16, 101), (128, 128, 3, 1, 8, 51), (128, 256, 3, 1, 8, 51), (256, 256, 3, 1, 8, 51)]
ENCODER_TYPE = "ASP"
N_MELS = 64
NOUT = 512


def build(name: str) -> torch.nn.Module:
    module = __import__(f"models.{name}", fromlist=["MainModel"])
    encoder_type, n_mels, n_out = BASELINE_SETTINGS.get(name, (ENCODER_TYPE, N_MELS, NOUT))
    return module.MainModel(nOut=n_out, encoder_type=encoder_type, n_mels=n_mels, log_input=True)


def calibrate(model: torch.nn.Module, wave: torch.Tensor) -> None:
    """BatchNorm running statistics of one batch, so that eval mode is well scaled with random weights."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(wave)
    for m in bns:
        m.momentum = 0.1


def twins(widths: tuple[int, ...], wave: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(reference model, our model) with the same weights, via the official-checkpoint converter."""
    ref = ReferenceResNet(widths, RESNET34_DEPTHS, nOut=NOUT, encoder_type=ENCODER_TYPE, n_mels=N_MELS)
    calibrate(ref, wave)
    ours = build("DTDY_ResNet34_half" if widths == WIDTHS_HALF else "DTDY_ResNet34_quarter")
    ckpt = {"model_state_dict": {"__S__." + k: v for k, v in ref.state_dict().items()}}
    ours.load_state_dict(convert_official_checkpoint(ckpt, ours.state_dict())[0])
    return ref, ours


class Times(NamedTuple):
    """Per-iteration wall-clock and process times of one contender, in seconds, and its peak GPU memory."""

    wall: list[float]
    cpu: list[float]
    peak_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def speedup(base: Times, new: Times, clock: str = "wall") -> float:
    """The median over iterations of base_i / new_i: the two ran back to back, so each ratio sees about the same
    load from other processes, where a ratio of medians mixes moments."""
    return statistics.median(b / n for b, n in zip(getattr(base, clock), getattr(new, clock), strict=True))


class Timer:
    """Interleaved timing of several contenders: wall and process time per call, peak memory on CUDA."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, fns: list[Callable[[], object]], iters: int, warmup: int = 1) -> list[Times]:
        peaks = []
        for fn in fns:
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(warmup):
                fn()
            self.sync()
            peaks.append(torch.cuda.max_memory_allocated() if self.cuda else 0)
        wall: list[list[float]] = [[] for _ in fns]
        cpu: list[list[float]] = [[] for _ in fns]
        for _ in range(iters):
            for i, fn in enumerate(fns):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                self.sync()
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        return [Times(w, c, p) for w, c, p in zip(wall, cpu, peaks, strict=True)]


def framework_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return FrameworkAdam(list(model.named_parameters()), lr=1e-3, weight_decay=5e-5, no_decay_bn_bias=False)


def official_adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-5)  # voxceleb_trainer's optimizer/adam.py


def train_step(model: torch.nn.Module, wave: torch.Tensor, amp: AbstractContextManager,
               make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] = framework_adam,
               ) -> Callable[[], None]:
    opt = make_optimizer(model)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with amp:
            out = model(wave)
        out.float().square().mean().backward()
        opt.step()
    return step


def infer(model: torch.nn.Module, wave: torch.Tensor, amp: AbstractContextManager) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad(), amp:
            model(wave)
    return run


def amp_for(device: str) -> AbstractContextManager:
    if device == "cpu":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def max_diff(a: torch.nn.Module, b: torch.nn.Module, wave: torch.Tensor, train: bool) -> float:
    """max |a - b| of the outputs, in eval mode without autograd or in train mode with it."""
    with torch.set_grad_enabled(train):
        return (a.train(train)(wave) - b.train(train)(wave)).abs().max().item()


def compare_readable(name: str, wave: torch.Tensor, args: argparse.Namespace, timer: Timer,
                     amp: AbstractContextManager) -> None:
    """Readable (and compiled) against the reference, training step and inference."""
    ref, ours = (m.to(wave.device) for m in twins(MODELS[name], wave[:2].cpu()))
    contenders = {name: ours}
    if args.compile:  # a copy, compiled in place: same weights, same state_dict keys
        contenders[name + " compiled"] = compiled = copy.deepcopy(ours)
        compiled.compile()
        for mode, fn in (("infer", infer(compiled, wave, amp)), ("train", train_step(compiled, wave, amp))):
            t0 = time.perf_counter()
            fn()
            timer.sync()
            print(f"{name + ' compiled':<32}{mode:<7}one-time compilation: {time.perf_counter() - t0:.1f} s")
        compiled.load_state_dict(ours.state_dict())  # undo the compiling training step
    # outputs before any timed step changes the weights: eval first (a train-mode forward updates the statistics)
    diffs = {label: [max_diff(ref, model, wave, False)] for label, model in contenders.items()}
    for label, model in contenders.items():
        diffs[label].append(max_diff(ref, model, wave, True))
    for label, model in contenders.items():
        t = timer.run([train_step(model, wave, amp), train_step(ref, wave, amp, official_adam)], args.iters)
        t += timer.run([infer(model, wave, amp), infer(ref, wave, amp)], args.iters)
        for mode, (o, r) in (("train", (t[0], t[1])), ("infer", (t[2], t[3]))):
            note = f"{diffs[label][0]:.1e} / {diffs[label][1]:.1e}" if mode == "train" else ""
            print(f"{label:<32}{mode:<7}{args.batch / o.median:>9.2f}{args.batch / r.median:>9.2f}"
                  f"{speedup(r, o):>8.2f}{speedup(r, o, 'cpu'):>8.2f}{note:>24}")


def compare_fast(name: str, wave: torch.Tensor, args: argparse.Namespace, timer: Timer) -> None:
    """fast_cpu_inference (and its variants) against the readable model, the same weights, CPU fp32."""
    model = build(name)
    calibrate(model, wave[:2])
    model.eval()
    with torch.no_grad(), _dtdy_cpu.fast_cpu_inference(copy.deepcopy(model)) as fast:
        expected = model(wave)
        diff = (fast(wave) - expected).abs().max().item()  # folds the operands
        t = timer.run([infer(model, wave, nullcontext()), infer(fast, wave, nullcontext())], args.iters)
    for label, times in (("folded", t[1]),):
        print(f"{name:<24}{label:<14}{args.batch / times.median:>9.2f}{args.batch / t[0].median:>10.2f}"
              f"{speedup(t[0], times):>8.2f}{speedup(t[0], times, 'cpu'):>8.2f}{diff:>12.1e}")


def compare_layers(args: argparse.Namespace, timer: Timer, device: str, amp: AbstractContextManager) -> None:
    print("\nDTDY layer alone, ms per call: readable vs reference (train: forward + backward, infer) and, on CPU, the "
          "folded path vs readable (infer)")
    print(f"{'C_in->C_out k s  F x T':<26}{'train':>8}{'ref':>8}{'x':>6}{'infer':>8}{'ref':>8}{'x':>6}"
          f"{'folded':>8}{'x':>6}")
    for c_in, c_out, k, s, freq, frames in LAYERS:
        ours = DTDYConv2d(c_in, c_out, k, s, freq).to(device, memory_format=torch.channels_last)
        ref = ReferenceDTDYConv2d(c_in, c_out, k, s, freq).to(device)
        x_ref = torch.randn(args.batch, c_in, freq, frames, device=device)
        x_ours = x_ref.transpose(2, 3).contiguous(memory_format=torch.channels_last)
        train_fns, infer_fns = [], []
        for layer, x in ((ours, x_ours), (ref, x_ref)):
            def fwd_bwd(layer=layer, x=x) -> None:
                with amp:
                    out = layer.train()(x)
                out.float().sum().backward()
            train_fns.append(fwd_bwd)
            infer_fns.append(infer(layer, x, amp))
        if device == "cpu":
            with torch.no_grad():
                folded = _dtdy_cpu.fold_dtdy(ours.eval(), torch.ones(c_out), torch.zeros(c_out))

            def fast(x=x_ours, layer=ours, folded=folded) -> None:
                with torch.no_grad():
                    _dtdy_cpu.folded_dtdy_forward(layer, folded, x)
            infer_fns.append(fast)
        t = timer.run(train_fns, args.iters) + timer.run(infer_fns, args.iters)  # apart: the BatchNorm modes
        cells = "".join(f"{1e3 * a.median:>8.2f}{1e3 * b.median:>8.2f}{speedup(b, a):>6.2f}"
                        for a, b in ((t[0], t[1]), (t[2], t[3])))
        if device == "cpu":
            cells += f"{1e3 * t[4].median:>8.2f}{speedup(t[2], t[4]):>6.2f}"
        print(f"{f'{c_in}->{c_out} {k} {s}  {freq} x {frames}':<26}{cells}")


def run_device(device: str, args: argparse.Namespace) -> None:
    timer, amp = Timer(device), amp_for(device)
    torch.manual_seed(0)
    wave = torch.randn(args.batch, crop_samples(args.frames), device=device)
    precision = "fp32" if device == "cpu" else f"autocast {amp.fast_dtype}"
    print(f"\n== {device}, {precision}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{crop_samples(args.frames)} samples per crop, median of {args.iters} interleaved iterations ==")

    print(f"\n{'model':<24}{'params':>12}{'train crops/s':>15}{'infer crops/s':>15}{'peak MiB t/i':>16}")
    models = {name: build(name) for name in args.models}
    for model in models.values():
        calibrate(model, wave[:2].cpu())  # random weights with eval-mode statistics of init would blow up
    models = {name: model.to(device) for name, model in models.items()}
    train_times = timer.run([train_step(m, wave, amp) for m in models.values()], args.iters)
    infer_times = timer.run([infer(m, wave, amp) for m in models.values()], args.iters)
    for (name, model), train_t, infer_t in zip(models.items(), train_times, infer_times, strict=True):
        n = sum(p.numel() for p in model.parameters())
        peak = f"{train_t.peak_bytes / 2**20:.0f} / {infer_t.peak_bytes / 2**20:.0f}" if device == "cuda" else "-"
        print(f"{name:<24}{n:>12,}{args.batch / train_t.median:>15.2f}{args.batch / infer_t.median:>15.2f}"
              f"{peak:>16}")
    del models

    dtdy = [n for n in args.models if MODELS[n] is not None]
    if dtdy:
        print("\nDTDY models, readable vs the straightforward formulation (same weights), crops/s and speed-up")
        print(f"{'model':<32}{'mode':<7}{'ours':>9}{'ref':>9}{'x wall':>8}{'x cpu':>8}{'max|diff| eval/train':>24}")
    for name in dtdy:
        compare_readable(name, wave, args, timer, amp)
    if device == "cpu":
        print("\nCPU inference path (fast_cpu_inference) vs the readable model, eval, crops/s and speed-up")
        print(f"{'model':<24}{'variant':<14}{'fast':>9}{'readable':>10}{'x wall':>8}{'x cpu':>8}{'max|diff|':>12}")
        for name in args.models:
            if name not in BASELINE_SETTINGS:  # the baselines have no blocks the CPU path folds
                compare_fast(name, wave, args, timer)
    if args.layers:
        compare_layers(args, timer, device, amp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per contender (median)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to time")
    parser.add_argument("--frames", type=int, default=200, help="crop length in frames (200: 2 s)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="where to run; 'all': CPU, then CUDA when available")
    parser.add_argument("--no-layers", dest="layers", action="store_false", help="skip the per-layer table")
    parser.add_argument("--compile", action="store_true", help="also time the readable DTDY models compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu", "cuda"]
    if "cpu" in devices:
        tune_allocator_for(torch.device("cpu"))  # as CPU runs of trainSpeakerNet.py; every contender alike
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\n(CUDA not available: GPU timings skipped)")
            continue
        run_device(device, args)


if __name__ == "__main__":
    main()
