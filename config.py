"""One typed definition of every option; the argument parser is generated from it.

Resolution order: built-in defaults < ``--config`` YAML < command line. An unknown key (YAML or command line) is an
error naming the closest valid key; values are coerced to the declared type (PyYAML reads ``5e-05`` as a string);
booleans are real (``--augment`` / ``--no-augment``). Defaults follow the DTDY paper's recipe (arXiv 2203.15277,
the official code's defaults). The file runs past 300 lines because every option is defined here, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fileio import atomic_write_text

log = logging.getLogger(__name__)


class UserError(Exception):
    """An error the user can fix (bad flag, file, list line, checkpoint). The CLI prints it and exits 2."""


class ConfigError(UserError):
    pass


def opt(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    # --- data and sampling
    max_frames: int = opt(200, "Training crop length in frames (10 ms hop; 200 = 2 s).", "data")
    eval_frames: int = opt(400, "Test crop length in frames; 0 embeds whole utterances.", "data")
    num_eval: int = opt(10, "Evenly spaced test crops per file (paper protocol).", "data")
    batch_size: int = opt(256, "Speakers per batch per process (each with nPerSpeaker crops).", "data")
    max_seg_per_spk: int = opt(500, "Maximum utterances per speaker per epoch.", "data")
    nDataLoaderThread: int = opt(5, "DataLoader worker processes per process (capped at its share of the cores: "
                                 "under torchrun the cores / local processes).", "data")
    augment: bool = opt(False, "MUSAN noise and RIR reverberation augmentation.", "data")
    aug_prob: float = opt(0.8, "--augment: probability that a crop is augmented (with one of reverberation, music, "
                          "babble, noise, equally likely); 0.8 is voxceleb_trainer's draw, WeSpeaker uses 0.6.",
                          "data")
    speed_perturb: bool = opt(False, "Speed perturbation 0.9/1.0/1.1 of training crops, each speed its own class "
                                     "(WeSpeaker): --nClasses must cover 3x the speakers.", "data")
    spec_augment: bool = opt(False, "SpecAugment of the training log-mels (--spec_* set its masks; the defaults are "
                             "WeSpeaker's).", "data")
    spec_freq_masks: int = opt(1, "--spec_augment: frequency masks per utterance.", "data")
    spec_freq_width: int = opt(8, "--spec_augment: a frequency mask covers 1 to this many mel bins.", "data")
    spec_time_masks: int = opt(1, "--spec_augment: time masks per utterance.", "data")
    spec_time_width: int = opt(10, "--spec_augment: a time mask covers 1 to this many frames.", "data")
    spec_prob: float = opt(0.6, "--spec_augment: probability that an utterance is masked at all.", "data")
    resample: bool = opt(False, "Resample audio that is not 16 kHz and average the channels of multichannel files "
                                "while reading (off: such files are an error).", "data")
    seed: int = opt(2021, "Seed of every random number generator (sampler: seed + epoch).", "data")
    # --- training
    test_interval: int = opt(10, "Evaluate and checkpoint every this many epochs (and at the last).", "train")
    save_interval: int = opt(0, "Also keep the numbered checkpoint of every this many epochs, without evaluating "
                             "(1: every epoch, for averageCheckpoints.py --last N; 0: only at evaluations).", "train")
    max_epoch: int = opt(200, "Number of epochs.", "train")
    trainfunc: str = opt("softmaxproto", "Loss: a module name in loss/.", "train")
    optimizer: str = opt("adam", "Optimizer: a module name in optimizer/.", "train")
    scheduler: str = opt("steplr", "Learning-rate scheduler: a module name in scheduler/.", "train")
    lr: float = opt(0.001, "Initial learning rate.", "train")
    lr_decay: float = opt(0.75, "steplr: learning-rate factor at each decay.", "train")
    decay_interval: int = opt(15, "steplr: epochs between decays.", "train")
    weight_decay: float = opt(5e-5, "Weight decay.", "train")
    momentum: float = opt(0.9, "sgd: momentum.", "train")
    nesterov: bool = opt(False, "sgd: Nesterov momentum.", "train")
    no_decay_bn_bias: bool = opt(False, "Exclude normalisation weights and biases from weight decay.", "train")
    warmup_epochs: float = opt(0.0, "Linear learning-rate warm-up length in epochs (cosine, exponential).", "train")
    lr_min: float = opt(0.0, "Final learning rate (cosine, exponential).", "train")
    # --- loss
    hard_prob: float = opt(0.5, "triplet: probability of a hard negative.", "loss")
    hard_rank: int = opt(10, "triplet: hard negatives drawn from this many closest.", "loss")
    margin: float = opt(0.1, "Margin of the margin losses.", "loss")
    scale: float = opt(30.0, "Scale of the margin losses.", "loss")
    nPerSpeaker: int = opt(2, "Crops per speaker in a batch (>= 2 for metric losses).", "loss")
    nClasses: int = opt(5994, "Number of training speakers.", "loss")
    subcenters: int = opt(3, "aamsoftmax_subcenter: centres per class.", "loss")
    margin_rampup_start: float = opt(0.0, "Epoch where the margin starts rising from 0.", "loss")
    margin_rampup_end: float = opt(0.0, "Epoch where the margin reaches its value (0/0: no schedule).", "loss")
    # --- evaluation
    dcf_p_target: float = opt(0.05, "minDCF target prior printed first (0.01 and 0.05 are always reported).", "eval")
    dcf_c_miss: float = opt(1.0, "minDCF cost of a miss.", "eval")
    dcf_c_fa: float = opt(1.0, "minDCF cost of a false alarm.", "eval")
    score_norm: str = opt("none", "Score normalisation against a cohort of training speakers, reported beside the "
                          "raw scores: none, asnorm (top --norm_top_n) or snorm (whole cohort).", "eval",
                          ("none", "asnorm", "snorm"))
    norm_top_n: int = opt(300, "asnorm: highest cohort scores per file used for its mean and std.", "eval")
    norm_cohort_utts: int = opt(3, "Utterances per --train_list speaker averaged into its cohort vector.", "eval")
    mean_subtraction: bool = opt(False, "Subtract the mean embedding of the cohort's training utterances (the "
                                 "--train_list files the cohort stage embeds) from test and cohort embeddings "
                                 "before scoring.", "eval")
    calibration_list: str = opt("", "Labelled trial list ('<label> <enroll> <test>' under --test_path) on which a "
                                "quality-aware calibration (QMF) is trained into --calibration_model; every list's "
                                "scores are then calibrated to log-likelihood ratios (<stem>.cal.txt).", "eval")
    calibration_model: str = opt("", "Calibration model (JSON): written when --calibration_list is given (default "
                                 "<save_path>/result/calibration.json), else applied if given.", "eval")
    score_from_cache: bool = opt(False, "With --eval: rescore from <save_path>/result/embeddings.npz, without the "
                                 "model or the audio.", "eval")
    extract: str = opt("", "Embed the files of this list ('<path>' or '<label> <path>' lines under --test_path) "
                       "into --extract_out, then stop.", "eval")
    extract_out: str = opt("", "Output .npz of --extract: names, embeddings (N, nOut) or (N, num_eval, nOut), "
                           "meta.", "eval")
    # --- paths
    initial_model: str = opt("", "Checkpoint to fine-tune or evaluate (ours or the official DTDY format).", "paths")
    save_path: str = opt("exps/exp1", "Experiment folder: model/, result/, config.yaml.", "paths")
    train_list: str = opt("data/train_list.txt", "Train list: '<speaker> <path under train_path>' lines.", "paths")
    test_list: list[str] = opt(["data/test_list.txt"], "Trial list(s): '<label> <enroll> <test>' under test_path.",
                               "paths")
    train_path: str = opt("data/voxceleb2/dev/wav", "Root of the training wav files.", "paths")
    test_path: str = opt("data/voxceleb1/wav", "Root of the test wav files.", "paths")
    musan_path: str = opt("data/musan_split", "MUSAN split into 5-s chunks.", "paths")
    rir_path: str = opt("data/RIRS_NOISES/simulated_rirs", "Simulated room impulse responses.", "paths")
    # --- model
    model: str = opt("DTDY_ResNet34_half", "Model: a module name in models/.", "model")
    encoder_type: str = opt("ASP", "Pooling: SAP, ASP, AVG or STP.", "model", ("SAP", "ASP", "AVG", "STP"))
    n_mels: int = opt(64, "Number of log-mel bins.", "model")
    log_input: bool = opt(True, "Log of the mel spectrogram.", "model")
    nOut: int = opt(512, "Embedding size.", "model")
    # --- runtime
    eval: bool = opt(False, "Evaluate only (no training).", "runtime")
    port: int = opt(0, "Rendezvous port for --distributed on one machine (0: a free port).", "runtime")
    distributed: bool = opt(False, "Distributed data parallel over the local GPUs.", "runtime")
    nproc_per_node: int = opt(0, "--distributed without torchrun: processes to start (0: one per GPU).", "runtime")
    mixedprec: bool = opt(False, "Mixed-precision training (the mel front-end stays fp32).", "runtime")
    mixedprec_dtype: str = opt("auto", "--mixedprec type on CUDA: auto (bf16 where the GPU supports it, else fp16), "
                               "bf16, or fp16 (with a dynamic gradient scaler); CPU: bf16.", "runtime",
                               ("auto", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the embedding model for training and embedding: the first steps wait "
                        "for the compiler (minutes on CPU), later ones run faster (DTDY models on CPU: README, "
                        "Benchmarks); weights and checkpoints are unchanged.", "runtime")
    compile_mode: str = opt("default", "--compile mode: default, reduce-overhead (CUDA graphs: fewer kernel launches, "
                            "more memory) or max-autotune (autotuned kernels, longer compile).", "runtime",
                            ("default", "reduce-overhead", "max-autotune"))
    fast_cpu_inference: bool = opt(True, "Evaluation and embedding on the CPU run the folded inference path of "
                                   "models/_dtdy_cpu.py (exact rewrites of the model, faster: README, Benchmarks); "
                                   "--no-fast_cpu_inference runs the readable model. No effect on GPUs and in "
                                   "training.", "runtime")
    log_interval: int = opt(20, "Read loss and accuracy back from the device every this many steps (progress bar, "
                            "non-finite check: a non-finite step is skipped, training stops within this many).",
                            "runtime")
    checkpoint_minutes: float = opt(0.0, "Also checkpoint inside an epoch every this many minutes (0: off).",
                                    "runtime")
    tensorboard: bool = opt(True, "TensorBoard scalars under <save_path>/tensorboard (rank 0).", "runtime")
    device: str = opt("auto", "auto (CUDA if available), cpu or cuda.", "runtime", ("auto", "cpu", "cuda"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The built-in defaults, one instance: plugins take the defaults of their parameters from it
# (``nOut: int = DEFAULTS.nOut``), so ``MainModel()`` in a notebook builds the paper's model and no default is
# written twice.
DEFAULTS = Config()

# Options that define the network's shape and input features: a checkpoint must agree on them.
MODEL_KEYS = ("model", "encoder_type", "n_mels", "log_input", "nOut")

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES: dict[str, type] = typing.get_type_hints(Config)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _closest(key: str, prefix: str = "") -> str:
    match = difflib.get_close_matches(key, list(_FIELDS), n=1, cutoff=0.0)
    return f"did you mean '{prefix}{match[0]}'?" if match else ""


def _type_name(typ: Any) -> str:
    return "a list of str" if typing.get_origin(typ) is list else typ.__name__


def coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the declared type of option ``key``; ``source`` says where it came from."""
    if key not in _FIELDS:
        raise ConfigError(f"Unknown option '{key}' in {source}; {_closest(key)} "
                          f"Run `python trainSpeakerNet.py --help` for every option.")
    typ = _TYPES[key]
    bad = ConfigError(f"Option '{key}' in {source} expects {_type_name(typ)}, got {value!r}.")
    if typing.get_origin(typ) is list:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in items):
            raise bad
        return [str(v) for v in items]
    if typ is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            out = value.strip().lower() in _TRUE
        else:
            raise bad
    elif typ is int:
        if isinstance(value, bool):
            raise bad
        try:
            num = float(value) if isinstance(value, str) else value
            if not isinstance(num, int | float) or float(num) != int(num):
                raise bad
            out = int(num)
        except (ValueError, OverflowError):
            raise bad from None
    elif typ is float:
        if isinstance(value, bool):
            raise bad
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise bad from None
    else:
        if value is None:
            out = ""
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            out = str(value)
        else:
            raise bad
    choices = _FIELDS[key].metadata["choices"]
    if choices and out not in choices:
        raise ConfigError(f"Option '{key}' in {source} is {out!r}; valid values: {', '.join(choices)}.")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, generated from :class:`Config`. Every option defaults to 'not given'."""
    parser = argparse.ArgumentParser(
        prog="trainSpeakerNet.py",
        description="Train and evaluate speaker-embedding networks (voxceleb_trainer layout, DTDY-CNN).",
        argument_default=argparse.SUPPRESS, allow_abbrev=False)
    parser.add_argument("--config", type=str, help="YAML file of options; the command line overrides it.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in _FIELDS.items():
        group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        helptext = f"{f.metadata['help']} (default: {default!r})"
        if _TYPES[name] is bool:
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=helptext)
        elif typing.get_origin(_TYPES[name]) is list:
            group.add_argument(f"--{name}", type=str, nargs="+", metavar="STR", help=helptext)
        else:
            group.add_argument(f"--{name}", type=str, metavar=_TYPES[name].__name__.upper(), help=helptext)
    return parser


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML as a mapping of raw values (not yet coerced)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' (--config) does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must be a mapping of option: value, got {type(data).__name__}.")
    return data


def resolve(yaml_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None,
            yaml_name: str = "the YAML config") -> Config:
    """Defaults < YAML < command line, every value checked and coerced."""
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        values[key] = coerce(str(key), value, f"config file {yaml_name}")
    for key, value in (cli_values or {}).items():
        values[key] = coerce(key, value, "the command line")
    return Config(**values)


def parse_args(argv: list[str] | None = None) -> Config:
    """Parse the command line (and the YAML it names) into a :class:`Config`."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            key = key[3:] if key.startswith("no-") else key
            raise ConfigError(f"Unknown option '{token}' on the command line; "
                              f"{_closest(key, '--')} "
                              f"Run `python trainSpeakerNet.py --help` for every option.")
        raise ConfigError(f"Unexpected argument '{token}' on the command line; options take the form --name value.")
    cli = vars(args)
    config_path = cli.pop("config", None)
    yaml_values = load_yaml(config_path) if config_path else {}
    return resolve(yaml_values, cli, yaml_name=f"'{config_path}'")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable back with ``--config``)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def diff_model_settings(stored: dict[str, Any], cfg: Config) -> list[str]:
    """The model-defining settings on which a checkpoint's config and ``cfg`` differ, as readable lines."""
    out = []
    for key in MODEL_KEYS:
        if key in stored and stored[key] != getattr(cfg, key):
            out.append(f"{key}: checkpoint {stored[key]!r}, now {getattr(cfg, key)!r}")
    return out
