"""Parameter groups for weight decay, shared by the optimizer plugins."""

from __future__ import annotations

from typing import Any

from torch import nn


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """True for biases and parameters of at most one dimension (norm weights, angleproto's w and b)."""
    return param.dim() <= 1 or name == "bias" or name.endswith(".bias")


def param_groups(named_parameters: list[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay_bn_bias: bool) -> list[dict[str, Any]]:
    """One group with ``weight_decay`` or, with ``no_decay_bn_bias``, decayed then :func:`is_no_decay` parameters (decay
    0); empty groups left out; names recorded under ``param_names``."""
    if weight_decay < 0:
        raise ValueError(f"--weight_decay must be >= 0, got {weight_decay}")
    named_parameters = list(named_parameters)
    if not named_parameters:
        raise ValueError("the optimizer got no parameters to train")
    if not no_decay_bn_bias:
        return [{"params": named_parameters, "weight_decay": weight_decay}]
    decay = [(n, p) for n, p in named_parameters if not is_no_decay(n, p)]
    no_decay = [(n, p) for n, p in named_parameters if is_no_decay(n, p)]
    groups = []
    for members, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if members:
            groups.append({"params": members, "weight_decay": wd})
    return groups
