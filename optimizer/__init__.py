"""Optimizers, one per file; ``--optimizer NAME`` loads ``optimizer/NAME.py``.

Contract of an optimizer plugin: ``def Optimizer(named_parameters: list[tuple[str, nn.Parameter]], lr: float,
weight_decay: float, <other config options by name>) -> torch.optim.Optimizer``. ``named_parameters`` is the
model's and the loss head's ``named_parameters()`` as a list. With ``no_decay_bn_bias`` the shared helper
:func:`optimizer._groups.param_groups` keeps normalisation weights, biases and every other parameter with at most
one dimension out of weight decay.

The built-in optimizers use PyTorch's fused implementations (one kernel per step for all parameters, on CPU and
GPU): the same updates as the per-parameter loop, 3-4x faster on CPU for the DTDY ResNets' 500 parameters.
"""
