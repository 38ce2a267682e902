"""AdamW: Adam with decoupled weight decay (I. Loshchilov, F. Hutter, ICLR 2019)."""

from __future__ import annotations

import torch
from torch import nn

from optimizer._groups import param_groups


def Optimizer(named_parameters: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
              no_decay_bn_bias: bool) -> torch.optim.Optimizer:
    """torch.optim.AdamW over ``named_parameters`` (see optimizer._groups for ``no_decay_bn_bias``)."""
    return torch.optim.AdamW(param_groups(named_parameters, weight_decay, no_decay_bn_bias), lr=lr, fused=True)
