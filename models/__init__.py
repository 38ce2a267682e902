"""Speaker-embedding models, one plugin per file: ``--model X`` loads ``models/X.py``.

Contract of a model plugin (tests/test_models.py checks every plugin):

- ``class MainModel(nn.Module)`` with ``__init__(self, nOut: int = DEFAULTS.nOut, encoder_type: str =
  DEFAULTS.encoder_type, n_mels: int = DEFAULTS.n_mels, log_input: bool = DEFAULTS.log_input)``, defaults from
  ``config.DEFAULTS``, so ``MainModel()`` is the paper's model. An unknown ``encoder_type`` raises ValueError
  listing the valid ones.
- ``forward(wave)``: wave (B, samples) float at 16 kHz -> embedding (B, nOut).
- ``torchfb``: the mel front-end inside the model (run by ``_frontend.log_mel``: fp32, no autocast, no gradient);
  checkpoints carry its buffers, sam.py reads its mel scale, official checkpoints are checked against it.
- ``feature_augment``: ``None`` or a callable (B, n_mels, T) -> (B, n_mels, T) on the log-mels in training mode
  only (set by ``--spec_augment``); not a submodule, so no state_dict change.
- Named child layers (``layer1`` ... ``layer4``): ``speakerActivationMap.py --layer`` takes any submodule whose
  output is (B, C, T', F') or (B, C, T').
- ``BasicBlock`` (``_resnet``) modules are what ``_dtdy_cpu.fast_cpu_inference`` folds; other models run as they are.
- Models construct and run on CPU and never choose a device.

Modules starting with ``_`` are building blocks: ``_frontend`` (log-mel), ``_pooling``, ``_dtdy`` (the DTDY
convolution), ``_dtdy_cpu`` (CPU inference path), ``_resnet``, ``_ecapa``, ``_campplus``, ``_official`` (official
DTDY-CNN checkpoint conversion).
"""
