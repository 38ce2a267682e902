"""The plugin resolver: discovery, helpful errors, only declared options passed."""

import pytest

import plugins
from config import Config


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
