"""bench/gpu_check.py end to end in its CPU form (``--device cpu --quick``): every section runs (the DDP training
over gloo, evaluation parity, export, throughput) and the reports say so. An end-to-end test of a few minutes."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_cpu_quick_check_runs_every_section_and_writes_both_reports(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out), "--minutes", "6"], cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    status = {sec["name"]: sec["status"] for sec in report["sections"]}
    assert status == {"corpus": "passed", "ddp": "passed", "ddp_fp16": "skipped", "eval_parity": "passed",
                      "export": "passed", "throughput": "passed"}, status
    sections = {sec["name"]: sec for sec in report["sections"]}
    assert sections["eval_parity"]["data"]["max_abs_diff"] <= 1e-4
    assert {"torchscript", "onnx"} <= set(sections["export"]["data"])
    models = sections["throughput"]["data"]["models"]
    assert len(models) == 6  # fp32 on the CPU
    assert all(m[f"{mode}_fp32_eager"]["crops_per_s"] > 0 for m in models.values() for mode in ("train", "infer"))
    assert all(m["gmac_per_crop"] > 0 for m in models.values())
    markdown = (out / "gpu_report.md").read_text()
    assert "| ddp | passed |" in markdown and "DTDY_ResNet34_half" in markdown
    assert markdown in proc.stdout
