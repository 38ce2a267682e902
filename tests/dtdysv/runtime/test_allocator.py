"""allocator.tune_cpu_allocator: a loop of CPU forward passes stops faulting its memory in again; only CPU runs
tune it."""

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from dtdysv.runtime import allocator

# Page faults of one inference step of two DTDY layers after warm-up, the median of 7 steps (a step now and
# then faults a few dozen pages for reasons of its own: the interpreter, the kernel).
SCRIPT = """
import resource, sys, torch
from dtdysv.runtime.allocator import tune_cpu_allocator
torch.set_num_threads(1)
tuned = tune_cpu_allocator() if sys.argv[1] == "tuned" else False
from models._dtdy import DTDYConv2d
layers = [DTDYConv2d(32, 32, 3, 1, 32).eval(), DTDYConv2d(128, 128, 3, 1, 8).eval()]
inputs = [torch.randn(4, 32, 100, 32), torch.randn(4, 128, 50, 8)]
def step():
    with torch.no_grad():
        for layer, x in zip(layers, inputs):
            layer(x)
for _ in range(3):
    step()
counts = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sorted(counts)[3])
"""


def faults(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    tuned, per_step = out.stdout.split()
    return tuned, float(per_step)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_allocator_reuses_freed_memory():
    tuned, tuned_faults = faults("tuned")
    _, default_faults = faults("default")
    assert tuned == "True"
    assert default_faults > 200, "the control no longer faults: glibc's defaults changed, the test proves nothing"
    assert tuned_faults < 0.05 * default_faults, (tuned_faults, default_faults)


def test_only_cpu_runs_tune_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda: calls.append(1) or True)
    assert allocator.tune_allocator_for(torch.device("cuda")) is False
    assert allocator.tune_allocator_for(torch.device("meta")) is False
    assert calls == []
    assert allocator.tune_allocator_for(torch.device("cpu")) is True
    assert calls == [1]
