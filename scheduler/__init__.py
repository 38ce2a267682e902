"""Learning-rate schedulers, one per file; ``--scheduler NAME`` loads ``scheduler/NAME.py``.

Contract of a scheduler plugin: ``def Scheduler(optimizer: torch.optim.Optimizer, <config options by name>,
iters_per_epoch: int) -> tuple[LRScheduler, str]``; the string, ``"epoch"`` or ``"iteration"``, says how often the
trainer calls ``.step()`` (after ``optimizer.step()``). ``state_dict()`` / ``load_state_dict()`` must reproduce an
uninterrupted run's learning rates. ``lr`` arrives as the optimizer's ``base_lrs``.
"""
