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

The hooks the framework uses:

- ``torchfb``: the mel front-end inside the model (``_frontend.make_mel_spectrogram``, a torchaudio MelSpectrogram
  computed in float64, run by ``_frontend.log_mel``: fp32 features, autocast off, no gradient), so checkpoints carry
  its buffers; the Speaker Activation Map (sam.py) reads its mel scale to place maps on the log-mel grid, and
  official checkpoints' front-ends are checked against it.
- ``feature_augment``: ``None`` or a callable (B, n_mels, T) -> (B, n_mels, T) applied to the log-mels in training
  mode only; ``--spec_augment`` sets it (augment.spec_augment). Not a submodule: it changes no state_dict.
- Named child layers (``layer1`` ... ``layer4`` and the like): ``speakerActivationMap.py --layer`` takes any
  submodule name; a layer gives a map when its output is (B, C, T', F') or (B, C, T').
- ``BasicBlock`` (``_resnet``) modules are what ``_dtdy_cpu.fast_cpu_inference`` folds for CPU evaluation
  (``--fast_cpu_inference``); other models run as they are.
- Models construct and run on CPU and never choose a device; the entry point moves them.

Modules starting with ``_`` are building blocks, not choices: ``_frontend`` (log-mel, the shared front-end base
of the baselines), ``_pooling`` (SAP, ASP, AVG, STP, ECAPA's context ASP), ``_dtdy`` (the DTDY convolution, the
paper's layer as written), ``_dtdy_cpu`` (the CPU inference path), ``_resnet`` (the ResNet-34
builder shared by the DTDY models and their static twins), ``_ecapa`` and ``_campplus`` (the baselines' blocks),
``_official`` (conversion of checkpoints from the official DTDY-CNN code).
"""
