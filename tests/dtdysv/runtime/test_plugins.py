"""The plugin resolver: discovery, helpful errors, only declared options passed."""

import pytest

from config import Config
from dtdysv.runtime import plugins


@pytest.mark.parametrize("kind", list(plugins.KINDS))
def test_every_kind_has_plugins_and_hides_helpers(kind):
    names = plugins.available(kind)
    assert names, kind
    assert not [n for n in names if n.startswith("_")]


def test_issue_minimum_set_is_present():
    assert {"ResNet34_half", "ResNet34_quarter", "DTDY_ResNet34_half", "DTDY_ResNet34_quarter"} <= set(
        plugins.available("model"))
    assert {"softmax", "aamsoftmax", "angleproto", "softmaxproto"} <= set(plugins.available("loss"))
    assert {"adam", "sgd"} <= set(plugins.available("optimizer"))
    assert "steplr" in plugins.available("scheduler")


@pytest.mark.parametrize("kind, flag", [("model", "--model"), ("loss", "--trainfunc"),
                                        ("optimizer", "--optimizer"), ("scheduler", "--scheduler")])
def test_unknown_name_lists_the_choices(kind, flag):
    with pytest.raises(plugins.PluginError) as err:
        plugins.load(kind, "NoSuchThing")
    msg = str(err.value)
    assert f"Unknown {kind} 'NoSuchThing' ({flag})" in msg
    for name in plugins.available(kind):
        assert name in msg


def test_build_passes_only_declared_options(tmp_path, monkeypatch):
    seen = {}

    def factory(nOut: int, margin: float, extra: int = 3):
        seen.update(nOut=nOut, margin=margin, extra=extra)
        return "built"

    monkeypatch.setattr(plugins, "load", lambda kind, name: factory)
    assert plugins.build("loss", "x", Config(nOut=7, margin=0.3)) == "built"
    assert seen == {"nOut": 7, "margin": 0.3, "extra": 3}
    plugins.build("loss", "x", Config(), nOut=5)  # runtime arguments win over the config
    assert seen["nOut"] == 5


def test_build_refuses_an_undeclarable_parameter(monkeypatch):
    def factory(nOut: int, mystery: float):
        return None

    monkeypatch.setattr(plugins, "load", lambda kind, name: factory)
    with pytest.raises(plugins.PluginError, match="needs a parameter 'mystery'"):
        plugins.build("loss", "x", Config())


# Baselines of other papers default to their papers' settings (80 mels, their pooling and embedding size), so that
# MainModel() builds the model of the paper's parameter count.
PAPER_DEFAULTS = {"ECAPA_TDNN_c512": 6_190_720, "ECAPA_TDNN_c1024": 14_657_088, "CAMPPlus": 7_176_224}


@pytest.mark.parametrize("kind", ["model", "loss"])
def test_plugin_defaults_are_the_config_defaults(kind):
    """A plugin's parameters that are config options default to the config's value (one definition of each)."""
    import inspect

    from config import DEFAULTS

    for name in plugins.available(kind):
        if name in PAPER_DEFAULTS:
            continue
        for param in inspect.signature(plugins.load(kind, name)).parameters.values():
            if hasattr(DEFAULTS, param.name):
                assert param.default == getattr(DEFAULTS, param.name), f"{kind} {name}: {param.name}"


def test_models_build_with_the_paper_defaults_as_in_a_notebook():
    from models.DTDY_ResNet34_half import MainModel

    model = MainModel()  # the DTDY code's defaults: ASP, 64 mels, nOut 512: the paper's 13.6M row
    assert sum(p.numel() for p in model.parameters()) == 13_566_528
    assert model.torchfb.mel_scale.fb.shape == (257, 64)
    sap = MainModel(nOut=256, encoder_type="SAP", n_mels=40)
    assert sap.fc.out_features == 256 and sap.torchfb.mel_scale.fb.shape == (257, 40)


@pytest.mark.parametrize("name", sorted(PAPER_DEFAULTS))
def test_baselines_build_their_papers_model_by_default(name):
    model = plugins.load("model", name)()
    assert sum(p.numel() for p in model.parameters()) == PAPER_DEFAULTS[name]


def test_losses_build_with_the_defaults():
    from loss.aamsoftmax import LossFunction as AAM
    from loss.softmaxproto import LossFunction as SoftmaxProto

    head = SoftmaxProto()
    assert head.softmax.fc.weight.shape == (5994, 512)  # VoxCeleb2's speakers, the paper's embedding size
    aam = AAM(margin=0.2, scale=32.0)
    assert (aam.margin, aam.scale) == (0.2, 32.0)
