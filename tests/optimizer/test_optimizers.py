"""Every optimizer plugin: contract, parameter groups of no_decay_bn_bias (by name and by behaviour), the learning
rate, and SGD's Nesterov momentum against the hand-written update."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import config
import optimizer as optimizer_package
from optimizer._groups import param_groups

OPTIMIZERS = sorted(m.name for m in pkgutil.iter_modules(optimizer_package.__path__) if not m.name.startswith("_"))
OPTIONS = {"lr": 0.1, "weight_decay": 0.01, "momentum": 0.9, "nesterov": False, "no_decay_bn_bias": False}


class Toy(nn.Module):
    """Conv + BatchNorm + LayerNorm + Linear, and a loss head with scalar scale/bias like angleproto's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))


DECAYED = {"conv.weight", "fc.weight"}
NOT_DECAYED = {"bn.weight", "bn.bias", "norm.weight", "norm.bias", "fc.bias", "w", "b"}


def build(name: str, model: nn.Module, **overrides: object) -> torch.optim.Optimizer:
    factory = importlib.import_module(f"optimizer.{name}").Optimizer
    params = inspect.signature(factory).parameters
    options = {**OPTIONS, **overrides, "named_parameters": list(model.named_parameters())}
    return factory(**{p: options[p] for p in params})


def test_required_optimizers_are_discovered() -> None:
    assert {"adam", "adamw", "sgd"} <= set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_contract(name: str) -> None:
    factory = importlib.import_module(f"optimizer.{name}").Optimizer
    params = list(inspect.signature(factory).parameters.values())
    assert [p.name for p in params[:3]] == ["named_parameters", "lr", "weight_decay"]
    config_keys = {f.name for f in dataclasses.fields(config.Config)}
    for p in params[1:]:
        assert p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        assert p.name in config_keys and p.default is p.empty, p.name
    optimizer = build(name, Toy())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [OPTIONS["lr"]]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_update_equals_the_loop(name: str) -> None:
    """The plugins run PyTorch's fused kernels: same parameters after a few steps as the per-parameter loop."""
    fused, looped = Toy(), Toy()
    looped.load_state_dict(fused.state_dict())
    opt_fused = build(name, fused)
    assert opt_fused.defaults["fused"] is True
    opt_loop = build(name, looped)
    for group in opt_loop.param_groups:
        group["fused"] = False
    for step in range(3):
        for model, opt in ((fused, opt_fused), (looped, opt_loop)):
            gen = torch.Generator().manual_seed(step)  # the same gradients for both
            opt.zero_grad()
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    for (name_f, p_f), (_, p_l) in zip(fused.named_parameters(), looped.named_parameters(), strict=True):
        torch.testing.assert_close(p_f, p_l, msg=name_f)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_group_with_decay_by_default(name: str) -> None:
    optimizer = build(name, Toy())
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == OPTIONS["weight_decay"]
    assert set(group["param_names"]) == DECAYED | NOT_DECAYED
    assert optimizer.state_dict()["param_groups"][0]["param_names"] == group["param_names"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_decay_bn_bias_groups(name: str) -> None:
    optimizer = build(name, Toy(), no_decay_bn_bias=True)
    decay, no_decay = optimizer.param_groups
    assert set(decay["param_names"]) == DECAYED and decay["weight_decay"] == OPTIONS["weight_decay"]
    assert set(no_decay["param_names"]) == NOT_DECAYED and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == OPTIONS["lr"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_decay_params_are_not_decayed(name: str) -> None:
    # Zero loss gradient: only weight decay can move a parameter.
    model = Toy()
    optimizer = build(name, model, no_decay_bn_bias=True, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        if n in DECAYED:
            assert not torch.equal(p, before[n]), f"{n} should decay"
            assert p.norm() < before[n].norm()
        else:
            assert torch.equal(p, before[n]), f"{n} must not decay"


def test_no_decay_groups_skip_empty_and_prefixed_names() -> None:
    linear = nn.Linear(3, 2)
    named = [(f"loss.{n}", p) for n, p in linear.named_parameters()]
    groups = param_groups(named, weight_decay=0.5, no_decay_bn_bias=True)
    assert [[n for n, _ in g["params"]] for g in groups] == [["loss.weight"], ["loss.bias"]]
    only_scalars = [("w", nn.Parameter(torch.tensor(1.0)))]
    assert [g["weight_decay"] for g in param_groups(only_scalars, 0.5, True)] == [0.0]
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(named, weight_decay=-1.0, no_decay_bn_bias=False)
    with pytest.raises(ValueError, match="no parameters"):
        param_groups([], weight_decay=0.0, no_decay_bn_bias=False)


def test_sgd_nesterov_passes_through_and_matches_the_update_rule() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build("sgd", nn.ParameterDict({"p": p}), nesterov=True, momentum=0.9, weight_decay=0.0, lr=0.1)
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    expected = p.detach().clone()
    buf = None
    for _ in range(3):
        opt.zero_grad()
        (p**2).sum().backward()  # grad = 2 p
        grad = 2 * expected
        buf = grad if buf is None else 0.9 * buf + grad
        expected = expected - 0.1 * (grad + 0.9 * buf)  # Nesterov: step along grad + momentum * buffer
        opt.step()
        assert torch.allclose(p.detach(), expected)
    plain = build("sgd", Toy(), nesterov=False)
    assert plain.param_groups[0]["nesterov"] is False
    with pytest.raises(ValueError, match="nesterov"):
        build("sgd", Toy(), nesterov=True, momentum=0.0)
