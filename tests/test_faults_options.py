"""Options refused at the start, before any data is read or any model is built: out-of-range values, --eval with
--extract, and an --extract_out that is a folder."""

import logging

import pytest

import trainSpeakerNet
from config import Config, ConfigError, parse_args
from dtdysv.evaluation import embed as embedding
from dtdysv.evaluation import pipeline as evaluation

BAD = [("max_frames", "0", ">= 1"), ("max_frames", "-200", ">= 1"), ("eval_frames", "-1", ">= 0"),
       ("lr", "0", "> 0"), ("lr", "-0.001", "> 0"), ("lr", "nan", "> 0"), ("test_interval", "0", ">= 1"),
       ("nDataLoaderThread", "-1", ">= 0"), ("n_mels", "0", ">= 1"), ("nOut", "0", ">= 1"),
       ("batch_size", "0", ">= 1"), ("batch_size", "-3", ">= 1"), ("nPerSpeaker", "0", ">= 1"),
       ("max_epoch", "0", ">= 1"), ("max_epoch", "-1", ">= 1")]


@pytest.mark.parametrize("flag, value, valid", BAD)
def test_out_of_range_options_are_refused_naming_the_flag_and_the_range(flag, value, valid):
    with pytest.raises(ConfigError) as err:
        parse_args([f"--{flag}", value])
    message = str(err.value)
    assert message.startswith(f"--{flag} is ") and f"; valid: {valid}" in message and "\n" not in message


def test_every_bad_option_is_named_in_one_error_and_yaml_values_are_checked_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 0\nnOut: -5\n")
    with pytest.raises(ConfigError, match=r"^--batch_size is 0; valid: >= 1\.\n--nOut is -5; valid: >= 1\.$"):
        parse_args(["--config", str(path)])


def test_the_lowest_valid_values_are_accepted():
    cfg = parse_args(["--nDataLoaderThread", "0", "--eval_frames", "0", "--max_frames", "1", "--max_epoch", "1",
                      "--test_interval", "1", "--lr", "1e-9", "--batch_size", "1", "--nPerSpeaker", "1"])
    assert (cfg.nDataLoaderThread, cfg.eval_frames, cfg.lr) == (0, 0, 1e-9)


def test_eval_with_extract_is_refused(tmp_path, caplog):
    cfg = Config(eval=True, extract="files.txt", extract_out=str(tmp_path / "e.npz"))
    with pytest.raises(evaluation.EvalError, match="--extract embeds a file list and stops, so it would skip --eval"):
        evaluation.check_eval_options(cfg)
    with caplog.at_level(logging.ERROR):
        assert trainSpeakerNet.main(["--eval", "--extract", "files.txt", "--extract_out", str(tmp_path / "e.npz"),
                                     "--save_path", str(tmp_path / "exp"), "--device", "cpu"]) == 2
    assert "would skip --eval" in caplog.text and not (tmp_path / "exp").exists()


def test_an_extract_out_folder_is_refused_before_any_embedding(tmp_path, caplog):
    folder = tmp_path / "out"
    folder.mkdir()
    cfg = Config(extract="files.txt", extract_out=str(folder))
    with pytest.raises(evaluation.EvalError, match=r"--extract_out '.*out' is a folder"):
        evaluation.check_eval_options(cfg)
    with pytest.raises(evaluation.EvalError, match=r"--extract_out '.*out' is a folder; give the .npz file"):
        embedding.run_extract(cfg, embedder=None)  # refused before the list, the model or the audio is touched
    with caplog.at_level(logging.ERROR):
        assert trainSpeakerNet.main(["--extract", "files.txt", "--extract_out", str(folder), "--device", "cpu",
                                     "--save_path", str(tmp_path / "exp")]) == 2
    assert "is a folder" in caplog.text
