"""Text inputs under faults: UTF-8 with a byte-order mark is read as UTF-8, other encodings are an error naming the
file and line (not a UnicodeDecodeError), and a YAML key given twice is refused."""

import numpy as np
import pytest
import soundfile

import scoreSpeakers
from config import ConfigError, load_yaml, parse_args
from dtdysv.data.lists import read_train_list, read_trial_list
from dtdysv.errors import UserError
from dtdysv.evaluation.embed import read_file_list
from dtdysv.prep.archives import read_url_list

BOM = b"\xef\xbb\xbf"
LATIN1 = "café".encode("latin-1")  # 0xe9 is not UTF-8


@pytest.fixture
def wavs(tmp_path):
    root = tmp_path / "wav"
    for rel in ("id1/v/1.wav", "id1/v/2.wav", "id2/v/1.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / rel, np.zeros(1600), 16000, subtype="PCM_16")
    return root


def test_a_bom_in_a_train_list_makes_no_phantom_speaker(tmp_path, wavs):
    path = tmp_path / "train.txt"
    path.write_bytes(BOM + b"id1 id1/v/1.wav\nid1 id1/v/2.wav\r\nid2 id2/v/1.wav\n")
    train = read_train_list(path, wavs)
    assert train.speakers == ["id1", "id2"] and train.labels.tolist() == [0, 0, 1] and train.lines == [1, 2, 3]


def test_a_bom_in_a_trial_list_keeps_its_labels(tmp_path, wavs):
    path = tmp_path / "trials.txt"
    path.write_bytes(BOM + b"1 id1/v/1.wav id1/v/2.wav\n0 id1/v/1.wav id2/v/1.wav\n")
    assert read_trial_list(path, wavs).labels.tolist() == [1, 0]


@pytest.mark.parametrize("flag", ["--train_list", "--test_list"])
def test_lists_that_are_not_utf8_name_the_file_and_line(tmp_path, wavs, flag):
    path = tmp_path / "list.txt"
    path.write_bytes(b"1 id1/v/1.wav id1/v/2.wav\n1 " + LATIN1 + b".wav id1/v/2.wav\n")
    read = read_train_list if flag == "--train_list" else read_trial_list
    with pytest.raises(UserError, match=rf"List file '.*list.txt' \({flag}\) is not UTF-8 text: line 2, column 6"):
        read(path, wavs)


def test_yaml_with_a_bom_loads_and_other_encodings_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(BOM + b"lr: 0.01\nsave_path: exps/x\n")
    assert load_yaml(path) == {"lr": 0.01, "save_path": "exps/x"}
    assert parse_args(["--config", str(path)]).lr == 0.01
    path.write_bytes(b"lr: 0.01\n# " + LATIN1 + b"\n")
    with pytest.raises(UserError, match=r"Config file '.*c.yaml' \(--config\) is not UTF-8 text: line 2, column 6"):
        load_yaml(path)


def test_a_yaml_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nbatch_size: 100\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"Config file '.*c.yaml' gives 'lr' twice \(lines 1 and 3\)"):
        load_yaml(path)
    path.write_text("test_list: [a.txt, b.txt]\nflow: {a: 1, a: 2}\n")
    with pytest.raises(ConfigError, match="gives 'a' twice"):
        load_yaml(path)


def test_yaml_merge_keys_still_override_and_python_tags_are_still_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 0.01, nOut: 256}\nrun:\n  <<: *b\n  lr: 0.1\n")
    assert load_yaml(path)["run"] == {"lr": 0.1, "nOut": 256}
    path.write_text("lr: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(path)


def test_wav_scp_and_pairs_files(tmp_path, wavs):
    scp, pairs = tmp_path / "wav.scp", tmp_path / "pairs.txt"
    scp.write_bytes(BOM + f"u1 {wavs / 'id1/v/1.wav'}\nu2 {wavs / 'id2/v/1.wav'}\n".encode())
    pairs.write_bytes(BOM + b"u1 u2\n")
    files = scoreSpeakers.read_wav_scp(scp)
    assert list(files) == ["u1", "u2"] and scoreSpeakers.read_pairs_file(pairs, files) == [("u1", "u2")]
    pairs.write_bytes(b"u1 u2\n" + LATIN1 + b" u1\n")
    with pytest.raises(UserError, match=r"--pairs_file '.*pairs.txt' is not UTF-8 text: line 2, column 4"):
        scoreSpeakers.read_pairs_file(pairs, files)
    scp.write_bytes(b"u1 " + LATIN1 + b".wav\n")
    with pytest.raises(UserError, match=r"--wav_scp '.*wav.scp' is not UTF-8 text: line 1"):
        scoreSpeakers.read_wav_scp(scp)


def test_url_and_extract_lists(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_bytes(BOM + b"musan https://example.org/musan.tar.gz\n")
    assert read_url_list(urls) == {"musan": ["https://example.org/musan.tar.gz"]}
    urls.write_bytes(b"# " + LATIN1 + b"\n")
    with pytest.raises(UserError, match=r"--url_list .*urls.txt is not UTF-8 text: line 1"):
        read_url_list(urls)
    files = tmp_path / "files.txt"
    files.write_bytes(BOM + b"id1/v/1.wav\nid2/v/1.wav\n")
    assert read_file_list(files) == (["id1/v/1.wav", "id2/v/1.wav"], None)
    files.write_bytes(b"id1/v/1.wav\n" + LATIN1 + b"\n")
    with pytest.raises(UserError, match=r"File list '.*files.txt' \(--extract\) is not UTF-8 text: line 2"):
        read_file_list(files)
