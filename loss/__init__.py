"""Training heads ("loss functions"), one per file; ``--trainfunc NAME`` loads ``loss/NAME.py``.

Contract of a loss plugin (checked by ``tests/test_losses.py`` for every module here not starting with '_'):

- ``class LossFunction(nn.Module)`` with explicit keyword parameters taken from the config options of the same
  name: ``nOut: int, nClasses: int`` and, where needed, ``margin: float, scale: float, hard_rank: int,
  hard_prob: float, subcenters: int``, each defaulting to ``config.DEFAULTS.<name>`` (the config owns the
  value; ``LossFunction()`` builds the default head), no ``**kwargs``.
- Class attributes ``test_normalize: bool`` (L2-normalise test embeddings before scoring; read by the evaluation
  through ``runtime.test_normalize``) and ``min_per_speaker: int`` (the smallest ``nPerSpeaker`` the loss works
  with; ``runtime.build_net`` refuses a smaller ``--nPerSpeaker`` at start).
- ``forward(x, label)``: ``x`` float (B, nPerSpeaker, nOut), utterance ``n`` of row ``b`` belongs to speaker
  ``label[b]`` (LongTensor (B,), values in 0..nClasses-1) -> ``(loss, prec1)``: a scalar loss tensor and the
  top-1 accuracy in percent (0..100, a scalar tensor, no gradient) of the task the loss solves: speaker classes
  for classifiers, the in-batch speaker (prototype) for metric losses.
- Metric losses (angleproto, ge2e, proto, triplet) treat the B rows as B distinct speakers (the sampler
  guarantees it) and use the row index as the target; ``label`` is only checked.
- Classifiers flatten ``x`` to (B * nPerSpeaker, nOut) and repeat the labels (``repeat_interleave``).
- Losses with a margin expose a float attribute ``margin`` that the trainer may overwrite between steps (margin
  schedule, :class:`scheduler._margin.MarginSchedule`).
- No device anywhere: a loss constructs and runs on CPU and follows its input when moved.
- Parameter names follow voxceleb_trainer so official checkpoints (keys ``__L__.<name>``) load.

Shared pieces: ``_common.py`` (input checks, accuracy), ``_margin.py`` (additive angular margin).
"""
