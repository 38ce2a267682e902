"""Every option, typed and defined once (hence the file's length); the argument parser is generated from it.

Defaults (the DTDY paper's recipe, arXiv 2203.15277) < ``--config`` YAML < command line. Unknown keys are errors
naming the closest key; values are coerced to the declared type (PyYAML reads ``5e-05`` as a string).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dtdysv.errors import UserError
from dtdysv.runtime.fileio import atomic_write_text, read_text

log = logging.getLogger(__name__)


class ConfigError(UserError):
    pass


# The plugin folders beside this file: kind -> (package folder, entry point, the flag that names it).
PLUGIN_KINDS = {
    "model": ("models", "MainModel", "--model"),
    "loss": ("loss", "LossFunction", "--trainfunc"),
    "optimizer": ("optimizer", "Optimizer", "--optimizer"),
    "scheduler": ("scheduler", "Scheduler", "--scheduler"),
}


def available_plugins(kind: str) -> list[str]:
    """Names of every plugin of ``kind`` (module files not starting with '_'): the choices of its flag."""
    folder = Path(__file__).resolve().parent / PLUGIN_KINDS[kind][0]
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


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
    aug_prob: float = opt(0.8, "--augment: probability that a crop gets one of reverb/music/babble/noise.", "data")
    speed_perturb: bool = opt(False, "Speed perturbation 0.9/1.0/1.1, each speed a class (--nClasses: 3x speakers).",
                              "data")
    spec_augment: bool = opt(False, "SpecAugment of the training log-mels (masks: --spec_*).", "data")
    spec_freq_masks: int = opt(1, "--spec_augment: frequency masks per utterance.", "data")
    spec_freq_width: int = opt(8, "--spec_augment: a frequency mask covers 1 to this many mel bins.", "data")
    spec_time_masks: int = opt(1, "--spec_augment: time masks per utterance.", "data")
    spec_time_width: int = opt(10, "--spec_augment: a time mask covers 1 to this many frames.", "data")
    spec_prob: float = opt(0.6, "--spec_augment: probability that an utterance is masked at all.", "data")
    resample: bool = opt(False, "Resample non-16 kHz audio and average channels on read (off: an error).", "data")
    seed: int = opt(2021, "Seed of every random number generator (sampler: seed + epoch).", "data")
    seeds: list[int] = opt([], "Run once per seed (each overriding --seed) into <save_path>/seed<k>/, then write "
                           "<save_path>/seeds.md and seeds.csv (mean and std); a rerun resumes.", "data")
    # --- training
    test_interval: int = opt(10, "Evaluate and checkpoint every this many epochs (and at the last).", "train")
    save_interval: int = opt(0, "Also keep a numbered checkpoint every this many epochs (0: only at evaluations).",
                             "train")
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
    margin_rampup_start: float = opt(0.0, "Epoch (from 1) at whose start the margin rises from 0, as WeSpeaker.",
                                     "loss")
    margin_rampup_end: float = opt(0.0, "Epoch (from 1) at whose start the margin is reached (0/0: no ramp).", "loss")
    # --- evaluation
    dcf_p_target: float = opt(0.05, "minDCF target prior printed first (0.01 and 0.05 are always reported).", "eval")
    dcf_c_miss: float = opt(1.0, "minDCF cost of a miss.", "eval")
    dcf_c_fa: float = opt(1.0, "minDCF cost of a false alarm.", "eval")
    bootstrap: int = opt(1000, "Speaker-bootstrap resamples behind the 95 percent intervals (0: none).", "eval")
    score_norm: str = opt("none", "Cohort score normalisation, reported beside raw scores.", "eval",
                          ("none", "asnorm", "snorm"))
    norm_top_n: int = opt(300, "asnorm: highest cohort scores per file used for its mean and std.", "eval")
    norm_cohort_utts: int = opt(3, "Utterances per --train_list speaker averaged into its cohort vector.", "eval")
    mean_subtraction: bool = opt(False, "Subtract the cohort utterances' mean embedding before scoring.", "eval")
    calibration_list: str = opt("", "Trial list to train a quality-aware calibration on (LLRs: <list>/scores.cal.txt).",
                                "eval")
    calibration_model: str = opt("", "Calibration JSON: written with --calibration_list, else applied if given.",
                                 "eval")
    score_from_cache: bool = opt(False, "With --eval: rescore from result/embeddings.npz (no model, no audio).",
                                 "eval")
    extract: str = opt("", "Embed the files of a file, train or trial list (under --test_path), then stop.", "eval")
    extract_out: str = opt("", "--extract output .npz: names, embeddings (N, nOut), one per file.", "eval")
    extract_crops: bool = opt(False, "--extract keeps every crop's embedding: (N, num_eval, nOut).", "eval")
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
    mixedprec_dtype: str = opt("auto", "--mixedprec type on CUDA: auto (bf16 where supported, else fp16), bf16, fp16.",
                               "runtime", ("auto", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the embedding model (slow first steps; checkpoints unchanged).",
                        "runtime")
    compile_mode: str = opt("default", "--compile mode: default, reduce-overhead (CUDA graphs) or max-autotune.",
                            "runtime", ("default", "reduce-overhead", "max-autotune"))
    fast_cpu_inference: bool = opt(True, "CPU evaluation runs the folded exact path of models/_dtdy_cpu.py.",
                                   "runtime")
    log_interval: int = opt(20, "Steps between reads of loss and accuracy from the device (and the NaN check).",
                            "runtime")
    checkpoint_minutes: float = opt(0.0, "Also checkpoint inside an epoch every this many minutes (0: off).",
                                    "runtime")
    tensorboard: bool = opt(True, "TensorBoard scalars under <save_path>/tensorboard (rank 0).", "runtime")
    threads: int = opt(0, "CPU threads of torch's intra-op pool (0: torch's default, one per core).", "runtime")
    device: str = opt("auto", "auto (CUDA if available), cpu or cuda.", "runtime", ("auto", "cpu", "cuda"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Plugins take their parameter defaults from it (``nOut: int = DEFAULTS.nOut``).
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
    return f"a list of {typing.get_args(typ)[0].__name__}" if typing.get_origin(typ) is list else typ.__name__


def coerce(key: str, value: Any, source: str) -> Any:
    """Convert ``value`` to the declared type of option ``key``; ``source`` says where it came from."""
    if key not in _FIELDS:
        raise ConfigError(f"Unknown option '{key}' in {source}; {_closest(key)} "
                          f"Run `python trainSpeakerNet.py --help` for every option.")
    typ = _TYPES[key]
    bad = ConfigError(f"Option '{key}' in {source} expects {_type_name(typ)}, got {value!r}.")
    if typing.get_origin(typ) is list:
        items = value if isinstance(value, list) else [value]
        if (not items and _FIELDS[key].default_factory()) or \
                not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in items):
            raise bad
        (item_type,) = typing.get_args(typ)
        return [_scalar(item_type, v, bad) for v in items]
    out = _scalar(typ, value, bad)
    choices = _FIELDS[key].metadata["choices"]
    if choices and out not in choices:
        raise ConfigError(f"Option '{key}' in {source} is {out!r}; valid values: {', '.join(choices)}.")
    return out


def _scalar(typ: type, value: Any, bad: ConfigError) -> Any:
    """``value`` as a bool, int, float or str (``typ``); ``bad`` if it is not one."""
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
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, generated from :class:`Config`. Every option defaults to 'not given'."""
    parser = argparse.ArgumentParser(
        prog="trainSpeakerNet.py",
        description="Train and evaluate speaker-embedding networks (voxceleb_trainer layout, DTDY-CNN).",
        argument_default=argparse.SUPPRESS, allow_abbrev=False)
    parser.add_argument("--config", type=str, help="YAML file of options; the command line overrides it.")
    plugin_choices = {flag[2:]: available_plugins(kind) for kind, (_, _, flag) in PLUGIN_KINDS.items()}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f in _FIELDS.items():
        group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        choices = f.metadata["choices"] or plugin_choices.get(name)
        helptext = f"{f.metadata['help']} (default: {default!r}{'; choices: ' + ', '.join(choices) if choices else ''})"
        if _TYPES[name] is bool:
            group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=helptext)
        elif typing.get_origin(_TYPES[name]) is list:
            metavar = typing.get_args(_TYPES[name])[0].__name__.upper()
            group.add_argument(f"--{name}", type=str, nargs="+", metavar=metavar, help=helptext)
        else:
            group.add_argument(f"--{name}", type=str, metavar=_TYPES[name].__name__.upper(), help=helptext)
    return parser


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} on lines {first} and {again}")
        self.key, self.first, self.again = key, first, again


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that refuses a key given twice in one mapping, where PyYAML would keep
    the last silently. Keys merged in with '<<' may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the safe loader refuses it below
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML (UTF-8) as a mapping of raw values (not yet coerced); a key given twice is an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' (--config) does not exist.")
    try:
        data = yaml.load(read_text(path, f"Config file '{path}' (--config)"), Loader=_StrictLoader)
    except _DuplicateKey as err:
        raise ConfigError(f"Config file '{path}' gives '{err.key}' twice (lines {err.first} and {err.again}); "
                          f"keep one of them.") from None
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
    cfg = Config(**values)
    check_ranges(cfg)
    return cfg


# Options that only make sense in a range: (lowest valid value, whether that value itself is excluded).
_RANGES: dict[str, tuple[float, bool]] = {
    "max_frames": (1, False), "eval_frames": (0, False), "batch_size": (1, False), "nPerSpeaker": (1, False),
    "nDataLoaderThread": (0, False), "test_interval": (1, False), "max_epoch": (1, False), "lr": (0, True),
    "n_mels": (1, False), "nOut": (1, False), "threads": (0, False), "bootstrap": (0, False),
    "log_interval": (1, False),
}


def check_ranges(cfg: Config) -> None:
    """Refuse options outside their range (``--lr 0``, ``--batch_size -1``), one line per option."""
    problems = []
    for key, (low, excluded) in _RANGES.items():
        value = getattr(cfg, key)
        if not (math.isfinite(value) and (value > low if excluded else value >= low)):
            meaning = {"eval_frames": " (0: whole utterances)",
                       "nDataLoaderThread": " (0: data read in the main process)",
                       "threads": " (0: torch's default)", "bootstrap": " (0: no intervals)"}.get(key, "")
            problems.append(f"--{key} is {value!r}; valid: {'>' if excluded else '>='} {low}{meaning}.")
    twice = sorted({seed for seed in cfg.seeds if cfg.seeds.count(seed) > 1})
    if twice:
        problems.append(f"--seeds gives {', '.join(map(str, twice))} more than once; each seed runs once, into "
                        f"<save_path>/seed<k>/: list distinct seeds.")
    if problems:
        raise ConfigError("\n".join(problems))


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
