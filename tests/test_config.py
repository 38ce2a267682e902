"""The typed config: defaults < YAML < command line, coercion, unknown keys, the generated parser."""

import pytest
import yaml

from config import Config, ConfigError, parse_args, save_config
from dtdysv.runtime import plugins


def write_yaml(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_follow_the_paper_recipe():
    cfg = parse_args([])
    assert (cfg.eval_frames, cfg.batch_size, cfg.seed, cfg.max_epoch) == (400, 256, 2021, 200)
    assert (cfg.trainfunc, cfg.lr_decay, cfg.decay_interval, cfg.weight_decay) == ("softmaxproto", 0.75, 15, 5e-5)
    assert (cfg.nPerSpeaker, cfg.n_mels, cfg.log_input, cfg.encoder_type) == (2, 64, True, "ASP")


def test_command_line_overrides_yaml_which_overrides_defaults(tmp_path):
    path = write_yaml(tmp_path, {"lr": "5e-05", "batch_size": 32, "max_frames": 100})
    cfg = parse_args(["--config", path, "--batch_size", "8"])
    assert cfg.lr == 5e-05 and isinstance(cfg.lr, float)  # PyYAML reads 5e-05 as a string
    assert cfg.batch_size == 8
    assert cfg.max_frames == 100
    assert cfg.test_interval == Config().test_interval


def test_booleans_are_real(tmp_path):
    assert parse_args(["--augment"]).augment is True
    assert parse_args(["--no-log_input"]).log_input is False
    path = write_yaml(tmp_path, {"augment": "yes", "log_input": False})
    cfg = parse_args(["--config", path])
    assert cfg.augment is True and cfg.log_input is False
    assert parse_args(["--config", path, "--no-augment"]).augment is False


@pytest.mark.parametrize("argv, expected", [
    (["--lrr", "0.1"], "did you mean '--lr'"),
    (["--nperspeaker", "2"], "did you mean '--nPerSpeaker'"),
    (["stray"], "Unexpected argument 'stray'"),
])
def test_unknown_command_line_option_names_the_closest(argv, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_args(argv)


def test_unknown_yaml_key_names_the_file_and_closest(tmp_path):
    path = write_yaml(tmp_path, {"encoder": "SAP"})
    with pytest.raises(ConfigError, match=r"Unknown option 'encoder' in config file .*did you mean 'encoder_type'"):
        parse_args(["--config", path])


@pytest.mark.parametrize("argv, expected", [
    (["--batch_size", "ten"], "'batch_size' in the command line expects int, got 'ten'"),
    (["--batch_size", "2.5"], "expects int"),
    (["--lr", "fast"], "expects float"),
    (["--encoder_type", "MAX"], "valid values: SAP, ASP, AVG, STP"),
])
def test_wrong_types_are_refused(argv, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_args(argv)


def test_spec_augment_settings_are_typed_options(tmp_path):
    cfg = parse_args([])
    assert (cfg.spec_augment, cfg.spec_freq_masks, cfg.spec_freq_width, cfg.spec_time_masks, cfg.spec_time_width,
            cfg.spec_prob) == (False, 1, 8, 1, 10, 0.6)  # WeSpeaker's setting
    path = write_yaml(tmp_path, {"spec_augment": "yes", "spec_freq_width": "12", "spec_time_masks": 2.0,
                                 "spec_prob": "5e-01"})
    cfg = parse_args(["--config", path, "--spec_time_width", "20", "--spec_freq_masks", "0"])
    assert cfg.spec_augment is True and cfg.spec_prob == 0.5 and isinstance(cfg.spec_prob, float)
    assert (cfg.spec_freq_masks, cfg.spec_freq_width, cfg.spec_time_masks, cfg.spec_time_width) == (0, 12, 2, 20)
    assert all(isinstance(v, int) for v in (cfg.spec_freq_width, cfg.spec_time_masks, cfg.spec_time_width))
    with pytest.raises(ConfigError, match="'spec_freq_width' in the command line expects int, got '2.5'"):
        parse_args(["--spec_freq_width", "2.5"])
    with pytest.raises(ConfigError, match="did you mean '--spec_time_width'"):
        parse_args(["--spec_time_widht", "3"])


def test_integral_floats_become_ints(tmp_path):
    assert parse_args(["--config", write_yaml(tmp_path, {"max_epoch": 1e2})]).max_epoch == 100


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_args(["--config", str(bad)])


def test_saved_config_reads_back_identically(tmp_path):
    cfg = parse_args(["--lr", "0.01", "--no-log_input", "--model", "ResNet34_quarter"])
    save_config(cfg, tmp_path / "config.yaml")
    assert parse_args(["--config", str(tmp_path / "config.yaml")]) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # written atomically: no temporary left


def test_every_shipped_config_is_valid():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml")):
        cfg = parse_args(["--config", str(path)])
        assert cfg.model in plugins.available("model"), path
        assert cfg.trainfunc in plugins.available("loss"), path


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for name in Config.__dataclass_fields__:
        assert f"--{name}" in out


def test_seeds_are_a_typed_list_of_distinct_ints(tmp_path):
    assert parse_args([]).seeds == []
    assert parse_args(["--seeds", "3", "1", "2"]).seeds == [3, 1, 2]
    assert parse_args(["--config", write_yaml(tmp_path, {"seeds": [1, "2", 3.0]})]).seeds == [1, 2, 3]
    assert parse_args(["--config", write_yaml(tmp_path, {"seeds": 7})]).seeds == [7]
    assert parse_args(["--config", write_yaml(tmp_path, {"seeds": []})]).seeds == []
    with pytest.raises(ConfigError, match=r"expects a list of int, got \[1, 'x'\]"):
        parse_args(["--config", write_yaml(tmp_path, {"seeds": [1, "x"]})])
    with pytest.raises(ConfigError, match="--seeds gives 2 more than once"):
        parse_args(["--seeds", "2", "5", "2"])
    with pytest.raises(ConfigError, match="'test_list' in config file .* expects a list of str"):  # it needs one
        parse_args(["--config", write_yaml(tmp_path, {"test_list": []})])
