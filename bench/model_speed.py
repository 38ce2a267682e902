"""Speed of the model zoo: training step and inference on 2-s crops, and our DTDY implementation against the
straightforward formulation of the official code (tests/reference_dtdy.py), side by side with the same weights.

    python bench/model_speed.py --compile      # CPU, then the GPU when there is one; --help for the options

Per model: one training step (forward, backward, Adam step; the loss is a stand-in, the loss head is not part of
the model) and inference (eval, no_grad) on crops of 32,240 samples (200 frames). Our models step with the
framework's optimizer (optimizer/adam.py, PyTorch's fused Adam), the reference with torch.optim.Adam's loop, as the
official code does. Contenders of one comparison run interleaved, iteration by iteration, so that load from other
processes hits them alike; times are medians, speed-ups the median of the per-iteration ratios. Wall-clock and
CPU-time (process time, less sensitive to other processes) speed-ups are both printed.
fp32 on CPU; on CUDA (when available) with autocast. ``--compile`` also times our DTDY models compiled with
torch.compile (as ``trainSpeakerNet.py --compile`` runs them) against the same eager reference, and reports the
one-time compilation separately (minutes on CPU). The process's malloc is tuned as trainSpeakerNet.py tunes it
(allocator.py: freed memory is reused, not faulted in again), for both contenders alike.
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

from allocator import tune_cpu_allocator  # noqa: E402
from models._dtdy import DTDYConv2d  # noqa: E402
from models._frontend import crop_samples  # noqa: E402
from models._official import convert_official_checkpoint  # noqa: E402
from models._resnet import RESNET34_DEPTHS, WIDTHS_HALF, WIDTHS_QUARTER  # noqa: E402
from optimizer.adam import Optimizer as FrameworkAdam  # noqa: E402
from tests.reference_dtdy import ReferenceDTDYConv2d, ReferenceResNet  # noqa: E402

MODELS = {"ResNet34_quarter": None, "ResNet34_half": None,
          "DTDY_ResNet34_quarter": WIDTHS_QUARTER, "DTDY_ResNet34_half": WIDTHS_HALF}
# (C_in, C_out, kernel, stride, F, T) of the DTDY layers of the x0.50 net at 64 mels and 202 frames
LAYERS = [(32, 32, 3, 1, 32, 202), (32, 64, 3, 2, 32, 202), (32, 64, 1, 2, 32, 202), (64, 64, 3, 1, 16, 101),
          (64, 128, 3, 2, 16, 101), (128, 128, 3, 1, 8, 51), (128, 256, 3, 1, 8, 51), (256, 256, 3, 1, 8, 51)]
ENCODER_TYPE = "ASP"
N_MELS = 64
NOUT = 512


def build(name: str) -> torch.nn.Module:
    module = __import__(f"models.{name}", fromlist=["MainModel"])
    return module.MainModel(nOut=NOUT, encoder_type=ENCODER_TYPE, n_mels=N_MELS, log_input=True)


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
    """Per-iteration wall-clock and process times of one contender, in seconds."""

    wall: list[float]
    cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def speedup(ref: Times, ours: Times, clock: str = "wall") -> float:
    """The median over iterations of ref_i / ours_i: the two ran back to back, so each ratio sees about the same
    load from other processes, where a ratio of medians mixes moments."""
    return statistics.median(r / o for r, o in zip(getattr(ref, clock), getattr(ours, clock), strict=True))


class Timer:
    """Interleaved timing of several contenders: wall and process time per call."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync

    def run(self, fns: list[Callable[[], object]], iters: int, warmup: int = 1) -> list[Times]:
        for fn in fns:
            for _ in range(warmup):
                fn()
        self.sync()
        wall: list[list[float]] = [[] for _ in fns]
        cpu: list[list[float]] = [[] for _ in fns]
        for _ in range(iters):
            for i, fn in enumerate(fns):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                self.sync()
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        return [Times(w, c) for w, c in zip(wall, cpu, strict=True)]


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


def max_diff(ref: torch.nn.Module, ours: torch.nn.Module, wave: torch.Tensor, train: bool) -> float:
    """max |ours - ref| of the outputs, in eval mode without autograd or in train mode with it (the modes that
    are timed, so that a compiled model is not compiled once more for this)."""
    with torch.set_grad_enabled(train):
        return (ref.train(train)(wave) - ours.train(train)(wave)).abs().max().item()


def run_device(device: str, args: argparse.Namespace) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer, amp = Timer(sync), amp_for(device)
    torch.manual_seed(0)
    wave = torch.randn(args.batch, crop_samples(args.frames), device=device)
    precision = "fp32" if device == "cpu" else f"autocast {amp.fast_dtype}"
    print(f"\n== {device}, {precision}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{crop_samples(args.frames)} samples per crop, median of {args.iters} interleaved iterations ==")

    print(f"\n{'model':<24}{'params':>12}{'train utt/s':>14}{'infer utt/s':>14}")
    models = {name: build(name) for name in args.models}
    for model in models.values():
        calibrate(model, wave[:2].cpu())  # random weights with eval-mode statistics of init would blow up
    models = {name: model.to(device) for name, model in models.items()}
    # training and inference timed apart: between training steps the weights change, and inference would have to
    # redo what it computes once per set of weights (models/_dtdy.py's folded operands)
    train_times = timer.run([train_step(m, wave, amp) for m in models.values()], args.iters)
    infer_times = timer.run([infer(m, wave, amp) for m in models.values()], args.iters)
    for (name, model), train_t, infer_t in zip(models.items(), train_times, infer_times, strict=True):
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:<24}{n:>12,}{args.batch / train_t.median:>14.2f}{args.batch / infer_t.median:>14.2f}")
    del models

    dtdy = [n for n in args.models if MODELS[n] is not None]
    if dtdy:
        print("\nDTDY models, ours vs the straightforward formulation (same weights), utt/s and speed-up")
        print(f"{'model':<32}{'mode':<7}{'ours':>9}{'ref':>9}{'x wall':>8}{'x cpu':>8}{'max|diff| eval/train':>24}")
    for name in dtdy:
        ref, ours = (m.to(device) for m in twins(MODELS[name], wave[:2].cpu()))
        contenders = {name: ours}
        if args.compile:  # a copy, compiled in place: same weights, same state_dict keys
            contenders[name + " compiled"] = compiled = copy.deepcopy(ours)
            compiled.compile()
            for mode, fn in (("infer", infer(compiled, wave, amp)), ("train", train_step(compiled, wave, amp))):
                t0 = time.perf_counter()
                fn()
                sync()
                print(f"{name + ' compiled':<32}{mode:<7}one-time compilation: {time.perf_counter() - t0:.1f} s")
            compiled.load_state_dict(ours.state_dict())  # undo the compiling training step
        # outputs against the reference before any timed step changes the weights: eval mode first (a train-mode
        # forward updates the BatchNorm statistics), then train mode (batch statistics)
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

    if args.layers:
        print("\nDTDY layer alone, ours vs the straightforward formulation, ms per call and speed-up")
        print(f"{'C_in->C_out k s  F x T':<26}{'train ours':>11}{'ref':>8}{'x wall':>8}{'x cpu':>7}"
              f"{'infer ours':>12}{'ref':>8}{'x wall':>8}{'x cpu':>7}")
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

                def fwd(layer=layer, x=x) -> None:
                    with torch.no_grad(), amp:
                        layer.eval()(x)
                train_fns.append(fwd_bwd)
                infer_fns.append(fwd)
            t = timer.run(train_fns, args.iters) + timer.run(infer_fns, args.iters)  # apart, as above
            label = f"{c_in}->{c_out} {k} {s}  {freq} x {frames}"
            print(f"{label:<26}{1e3 * t[0].median:>11.2f}{1e3 * t[1].median:>8.2f}{speedup(t[1], t[0]):>8.2f}"
                  f"{speedup(t[1], t[0], 'cpu'):>7.2f}{1e3 * t[2].median:>12.2f}{1e3 * t[3].median:>8.2f}"
                  f"{speedup(t[3], t[2]):>8.2f}{speedup(t[3], t[2], 'cpu'):>7.2f}")


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
    parser.add_argument("--compile", action="store_true", help="also time our DTDY models under torch.compile")
    args = parser.parse_args()
    tune_cpu_allocator()  # as trainSpeakerNet.py does; the same process runs both contenders
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu", "cuda"]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\n(CUDA not available: GPU timings skipped)")
            continue
        run_device(device, args)


if __name__ == "__main__":
    main()
