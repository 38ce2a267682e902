"""DDP through the real launcher: two CPU processes over gloo train, evaluate and exit."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_argv

pytestmark = pytest.mark.slow  # trains or runs the command end to end


def test_two_cpu_processes_train_evaluate_and_exit(corpus, tmp_path):
    save = tmp_path / "ddp"
    args = tiny_argv(corpus, save, "--distributed", "--nproc_per_node", "2", "--device", "cpu", "--batch_size", "2",
                     "--max_epoch", "1")
    proc = subprocess.run([sys.executable, str(ROOT / "trainSpeakerNet.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 (gloo" in proc.stderr and "2 processes x 2 speakers" in proc.stderr
    assert (save / "model/model000000001.model").is_file()
    metrics = json.loads((save / "result/test_list/metrics.json").read_text())["variants"]["raw"]
    assert metrics["n_trials"] == len((corpus / "test_list.txt").read_text().splitlines())
    scores = (save / "result/test_list/scores.txt").read_text().splitlines()
    assert len(scores) == metrics["n_trials"]


def test_distributed_without_gpu_or_nproc_is_a_clear_error(corpus, tmp_path):
    args = tiny_argv(corpus, tmp_path / "x", "--distributed", "--device", "cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "trainSpeakerNet.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--nproc_per_node" in proc.stderr
