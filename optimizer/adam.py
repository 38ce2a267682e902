"""Adam (D. P. Kingma, J. Ba, ICLR 2015) with the classic L2 ``weight_decay``, voxceleb_trainer's ``adam``."""

from __future__ import annotations

import torch
from torch import nn

from optimizer._groups import param_groups


def Optimizer(named_parameters: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
              no_decay_bn_bias: bool) -> torch.optim.Optimizer:
    """torch.optim.Adam over ``named_parameters`` (see optimizer._groups for ``no_decay_bn_bias``)."""
    return torch.optim.Adam(param_groups(named_parameters, weight_decay, no_decay_bn_bias), lr=lr, fused=True)
