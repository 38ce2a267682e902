"""bench/model_speed.py runs end to end (tiny crops) and reports the readable DTDY model equal to the reference and
the CPU inference path equal to the readable model."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_model_speed_runs_and_outputs_agree():
    cmd = [sys.executable, str(ROOT / "bench" / "model_speed.py"), "--models", "DTDY_ResNet34_quarter",
           "--no-layers", "--iters", "1", "--batch", "2", "--frames", "20", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split()[1]: line.split() for line in out.stdout.splitlines()
            if line.startswith("DTDY_ResNet34_quarter ") and line.split()[1] in ("train", "infer")}
    assert set(rows) == {"train", "infer"}, out.stdout
    eval_diff, train_diff = map(float, re.findall(r"(\d\.\d+e[-+]\d+)", " ".join(rows["train"][-3:])))
    assert eval_diff < 1e-4 and train_diff < 1e-4
    for mode in ("train", "infer"):  # ours, ref, x wall, x cpu are positive numbers
        assert all(float(v) > 0 for v in rows[mode][2:6])
    fast = {line.split()[1]: line.split() for line in out.stdout.splitlines()
            if line.startswith("DTDY_ResNet34_quarter ") and line.split()[1] == "folded"}
    assert set(fast) == {"folded"}, out.stdout
    assert float(fast["folded"][-1]) < 1e-4 and all(float(v) > 0 for v in fast["folded"][2:6])
