"""SGD with momentum, optionally Nesterov's (I. Sutskever et al., ICML 2013); voxceleb_trainer's ``sgd``."""

from __future__ import annotations

import torch
from torch import nn

from optimizer._groups import param_groups


def Optimizer(named_parameters: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, momentum: float,
              nesterov: bool, no_decay_bn_bias: bool) -> torch.optim.Optimizer:
    """torch.optim.SGD over ``named_parameters`` (see optimizer._groups for ``no_decay_bn_bias``)."""
    if momentum < 0:
        raise ValueError(f"--momentum must be >= 0, got {momentum}")
    if nesterov and momentum == 0:
        raise ValueError("--nesterov needs --momentum > 0 (e.g. 0.9)")
    return torch.optim.SGD(param_groups(named_parameters, weight_decay, no_decay_bn_bias), lr=lr,
                           momentum=momentum, nesterov=nesterov, fused=True)
