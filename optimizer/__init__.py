"""Optimizers, one per file; ``--optimizer NAME`` loads ``optimizer/NAME.py``.

Contract of an optimizer plugin: ``def Optimizer(named_parameters: list[tuple[str, nn.Parameter]], lr: float,
weight_decay: float, <other config options by name>) -> torch.optim.Optimizer``. ``named_parameters`` lists the model's
and the loss head's parameters. With ``no_decay_bn_bias``, :func:`optimizer._groups.param_groups` keeps normalisation
weights, biases and other parameters of at most one dimension out of weight decay. The built-in optimizers use PyTorch's
fused implementations.
"""
