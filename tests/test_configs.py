"""Every shipped config in configs/ (and its sub-folders) loads, resolves and builds its model and loss; the
parameter count its header states is the model's; each baseline has a paper-recipe and a modern-recipe config of the
same network."""

import re
from pathlib import Path

import pytest

from config import MODEL_KEYS, load_yaml, resolve
from dtdysv.runtime import plugins

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
BASELINES = ("ECAPA_TDNN_c512", "ECAPA_TDNN_c1024", "CAMPPlus")
VOXCELEB2_SPEAKERS = 5994
STATED_COUNT = re.compile(r"([\d,]{7,}) parameters")


def load(path: Path):
    return resolve(load_yaml(path), yaml_name=path.name)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(CONFIG_DIR).as_posix() for p in CONFIGS])
def test_config_builds_its_model_and_loss_with_the_stated_count(path):
    cfg = load(path)
    model = plugins.build("model", cfg.model, cfg)
    plugins.build("loss", cfg.trainfunc, cfg)
    for kind, name in (("optimizer", cfg.optimizer), ("scheduler", cfg.scheduler)):
        assert name in plugins.available(kind), f"{path.name}: {kind} {name}"
    header = " ".join(line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#"))
    stated = {int(n.replace(",", "")) for n in STATED_COUNT.findall(header)}
    assert len(stated) <= 1, f"{path.name} states several parameter counts: {stated}"
    if stated:
        assert sum(p.numel() for p in model.parameters()) == stated.pop(), path.name


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_has_a_paper_and_a_modern_recipe_of_the_same_network(name):
    paper, modern = (load(CONFIG_DIR / f"{name}{suffix}.yaml") for suffix in ("", "_modern"))
    assert paper.model == name
    assert [getattr(paper, k) for k in MODEL_KEYS] == [getattr(modern, k) for k in MODEL_KEYS]
    assert paper.n_mels == 80 and paper.nOut == (512 if name == "CAMPPlus" else 192)
    assert (paper.trainfunc, paper.optimizer, paper.scheduler, paper.augment) == ("softmaxproto", "adam", "steplr",
                                                                                  False)
    assert (modern.trainfunc, modern.optimizer, modern.nesterov, modern.scheduler) == ("aamsoftmax", "sgd", True,
                                                                                       "exponential")
    assert (modern.scale, modern.margin, modern.lr, modern.lr_min, modern.weight_decay) == (32.0, 0.2, 0.1, 5e-5,
                                                                                            1e-4)
    assert modern.margin_rampup_start < modern.margin_rampup_end and modern.warmup_epochs > 0
    assert modern.speed_perturb and modern.nClasses == 3 * VOXCELEB2_SPEAKERS  # each speed its own class
    assert (modern.batch_size, modern.nPerSpeaker, modern.max_frames, modern.eval_frames) == (128, 1, 200, 0)
