"""Test configuration: the repository root is the import root, as for `python trainSpeakerNet.py`."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A tiny demo corpus: 6 training speakers, 3 held-out test speakers, 1-s utterances."""
    from dtdysv.prep.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    make_demo_corpus(root, n_train_speakers=6, n_test_speakers=3, utts_per_speaker=4, test_utts_per_speaker=2,
                     videos_per_speaker=2, n_trials=12, min_seconds=1.0, max_seconds=1.2, seed=1)
    return root


def tiny_argv(corpus, save, *extra):
    """A tiny but complete training configuration: short crops, small batches, no workers."""
    return ["--model", "ResNet34_quarter", "--encoder_type", "SAP", "--nOut", "32", "--n_mels", "40",
            "--trainfunc", "softmaxproto", "--nClasses", "6", "--batch_size", "3", "--nPerSpeaker", "2",
            "--max_frames", "40", "--eval_frames", "60", "--num_eval", "2", "--max_epoch", "2",
            "--test_interval", "1", "--nDataLoaderThread", "0", "--seed", "5", "--lr", "0.001",
            "--train_list", str(corpus / "train_list.txt"), "--train_path", str(corpus / "train" / "wav"),
            "--test_list", str(corpus / "test_list.txt"), "--test_path", str(corpus / "test" / "wav"),
            "--save_path", str(save), *extra]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: on a busy 2-core machine two threads wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
