"""Learning-rate schedulers, one per file; ``--scheduler NAME`` loads ``scheduler/NAME.py``.

Contract of a scheduler plugin: ``def Scheduler(optimizer: torch.optim.Optimizer, <config options by name>,
iters_per_epoch: int) -> tuple[LRScheduler, str]``; the string is ``"epoch"`` or ``"iteration"``: how often the
trainer calls ``.step()`` (after ``optimizer.step()``). ``iters_per_epoch`` is passed by the trainer.
Schedulers are resumable: ``state_dict()`` / ``load_state_dict()`` (together with the optimizer's) reproduce
the learning rates of an uninterrupted run. The ``lr`` config option reaches the scheduler as the optimizer's
learning rate (``base_lrs``).
"""
