"""Training heads ("loss functions"), one per file; ``--trainfunc NAME`` loads ``loss/NAME.py``.

Contract of a loss plugin (``tests/test_losses.py`` checks every module not starting with '_'):

- ``class LossFunction(nn.Module)`` with explicit keyword parameters named as config options (``nOut, nClasses``
  and, where needed, ``margin, scale, hard_rank, hard_prob, subcenters``), each defaulting to
  ``config.DEFAULTS.<name>``; no ``**kwargs``.
- Class attributes ``test_normalize: bool`` (L2-normalise test embeddings before scoring) and
  ``min_per_speaker: int`` (smallest ``--nPerSpeaker`` accepted; ``runtime.build_net`` checks it).
- ``forward(x, label)``: x float (B, nPerSpeaker, nOut), row b all speaker ``label[b]`` (LongTensor (B,), in
  0..nClasses-1) -> ``(loss, prec1)``: scalar loss and top-1 accuracy in percent (scalar, no gradient) of the
  task solved (speaker class, or in-batch speaker for metric losses).
- Metric losses (angleproto, ge2e, proto, triplet) take the B rows as distinct speakers and use the row index as
  target; ``label`` is only checked. Classifiers flatten x to (B * nPerSpeaker, nOut) and repeat the labels.
- Margin losses expose a float ``margin`` the trainer may overwrite between steps (scheduler._margin).
- No device: a loss constructs on CPU and follows its input.
- Parameter names follow voxceleb_trainer, so official checkpoints (keys ``__L__.<name>``) load.

Shared pieces: ``_common.py`` (input checks, accuracy), ``_margin.py`` (additive angular margin).
"""
