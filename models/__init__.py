"""Speaker-embedding models, one plugin per file: ``--model X`` loads ``models/X.py``.

Contract of a model plugin (checked for every plugin by tests/test_models.py):

- ``class MainModel(nn.Module)`` with ``__init__(self, nOut: int = DEFAULTS.nOut, encoder_type: str =
  DEFAULTS.encoder_type, n_mels: int = DEFAULTS.n_mels, log_input: bool = DEFAULTS.log_input)``: config
  options, whose defaults come from ``config.DEFAULTS`` (never written twice), so ``MainModel()`` builds the
  paper's model. An unknown ``encoder_type`` raises ValueError listing the valid ones.
- ``forward(wave)``: wave (B, samples) float at 16 kHz -> embedding (B, nOut). The mel front-end is inside the
  model (attribute ``torchfb``, fp32, autocast off, no gradient), so checkpoints carry its buffers.
- Models construct and run on CPU and never choose a device; the entry point moves them.

Modules starting with ``_`` are building blocks, not choices: ``_frontend`` (log-mel), ``_pooling`` (SAP, ASP,
AVG, STP), ``_dtdy`` (the DTDY convolution), ``_resnet`` (the ResNet-34 builder shared by every variant),
``_official`` (conversion of checkpoints from the official DTDY-CNN code).
The ResNet trunk runs on time-major feature maps (B, C, T, F) in channels-last memory (see ``_dtdy``).
"""
