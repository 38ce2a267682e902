"""Exports of trained weights (export.py): DTDY x0.25 at the demo's size and CAM++ after a few training steps on
demo speech, with the BatchNorm statistics of that speech, export in both formats within the parity limits, on
demo utterances as on the export's own inputs; an export whose ONNX front-end is off (a filterbank perturbed by 1%)
is refused and leaves no file."""

import numpy as np
import pytest
import torch
from torch import nn

import export
from config import Config
from dtdysv.api import SpeakerVerifier
from dtdysv.data.audio import read_audio
from dtdysv.data.lists import read_train_list
from dtdysv.runtime.setup import build_net

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

DEMO = {"nOut": 128, "n_mels": 40, "trainfunc": "softmaxproto", "nPerSpeaker": 2}  # configs/demo.yaml's model
POOLING = {"DTDY_ResNet34_quarter": "SAP", "CAMPPlus": "STP"}
CROP = 12_960  # 80 frames, the demo's --max_frames


def trained_model(name: str, corpus, steps: int = 6) -> nn.Module:
    """Plugin ``name`` in eval mode after ``steps`` Adam steps of softmaxproto at the demo's learning rate on crops
    of every training speaker of ``corpus``, its BatchNorm statistics re-estimated on such crops."""
    train = read_train_list(corpus / "train_list.txt", corpus / "train" / "wav")
    audio = [read_audio(f) for f in train.files]
    owned = [np.flatnonzero(train.labels == s) for s in range(len(train.speakers))]
    rng = np.random.default_rng(0)

    def batch() -> torch.Tensor:  # (speakers, 2, CROP)
        crops = []
        for files in owned:
            for i in rng.choice(files, 2, replace=False):
                start = rng.integers(0, len(audio[i]) - CROP + 1)
                crops.append(audio[i][start:start + CROP])
        return torch.from_numpy(np.stack(crops).reshape(len(owned), 2, CROP))

    torch.manual_seed(0)
    net = build_net(Config(model=name, encoder_type=POOLING[name], nClasses=len(owned), **DEMO))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.002)
    net.train()
    for _ in range(steps):
        loss, _ = net(batch(), torch.arange(len(owned)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for m in net.model.modules():  # the statistics of the trained weights, as after an epoch's running average
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(2):
            net.model(batch().flatten(0, 1))
    return net.model.eval()


@pytest.fixture(scope="module", params=sorted(POOLING))
def trained(request, corpus):
    return request.param, trained_model(request.param, corpus)


def test_trained_weights_export_in_both_formats_within_the_limits(trained, corpus, tmp_path):
    name, model = trained
    sidecar = export.export_model(model, tmp_path, export.FORMATS, {"embedding_size": DEMO["nOut"]})
    for fmt in export.FORMATS:
        found = sidecar["parity"][fmt]
        assert found["passed"] and found["limits"] == {"embedding_relative_error": export.EMBEDDING_TOLERANCE,
                                                       "score_error": export.SCORE_TOLERANCE}
        assert found["embedding_relative_error"] <= export.EMBEDDING_TOLERANCE / 10, (name, fmt, found)
        assert found["score_error"] <= export.SCORE_TOLERANCE / 10, (name, fmt, found)
    # demo speech, not the export's inputs: each utterance alone, as the API embeds
    files = sorted((corpus / "test" / "wav").rglob("*.wav"))[:4]
    with torch.no_grad():
        eager = np.stack([model(torch.from_numpy(read_audio(f))[None])[0].numpy() for f in files])
    for fmt in export.FORMATS:
        got = SpeakerVerifier.from_export(tmp_path, prefer=fmt, threads=1).embed_many(files)
        relative = np.linalg.norm(got - eager, axis=1) / np.linalg.norm(eager, axis=1)
        assert relative.max() <= export.EMBEDDING_TOLERANCE / 10, (name, fmt, relative)


def test_an_export_with_a_perturbed_filterbank_is_refused_and_leaves_no_file(trained, tmp_path, monkeypatch):
    name, model = trained
    build = export.DftMelSpectrogram.__init__

    def perturbed(self, torchfb):
        build(self, torchfb)
        noise = torch.randn(self.fb.shape, generator=torch.Generator().manual_seed(0), dtype=self.fb.dtype)
        self.fb.mul_(1 + 0.01 * noise)

    monkeypatch.setattr(export.DftMelSpectrogram, "__init__", perturbed)
    out = tmp_path / "exported"
    with pytest.raises(export.ExportError, match=r"The onnx export differs from the eager model: its embeddings by "
                                                 r".*nothing was written"):
        export.export_model(model, out, export.FORMATS, {"embedding_size": DEMO["nOut"]})
    assert list(tmp_path.iterdir()) == []  # neither the folder, nor the TorchScript file that passed, nor a temporary
