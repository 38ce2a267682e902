"""Every loss trains the demo configuration for one epoch (tiny corpus) through the real command line."""

import json

import pytest

import trainSpeakerNet
from conftest import ROOT, tiny_argv
from dtdysv.runtime import plugins


@pytest.mark.slow
@pytest.mark.parametrize("trainfunc", plugins.available("loss"))
def test_every_loss_trains_the_demo_configuration(corpus, tmp_path, trainfunc):
    save = tmp_path / trainfunc
    args = ["--config", str(ROOT / "configs" / "demo.yaml"),
            *tiny_argv(corpus, save, "--trainfunc", trainfunc, "--max_epoch", "1", "--no-tensorboard",
                       "--margin_rampup_end", "1")]
    assert trainSpeakerNet.main(args) == 0
    metrics = json.loads((save / "result" / "test_list" / "metrics.json").read_text())["variants"]["raw"]
    assert 0.0 <= metrics["eer_percent"] <= 100.0
    assert "epoch 1: loss" in (save / "result" / "train.log").read_text()
