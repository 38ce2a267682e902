"""torch.compile sees the front-end and the DTDY layer as single graphs (no graph break), and the front-end written out
for it computes exactly what torchaudio's MelSpectrogram computes."""

import torch
import torchaudio

from models._dtdy import DTDYConv2d
from models._frontend import log_mel, make_mel_spectrogram


def test_the_written_out_mel_spectrogram_is_torchaudios_in_float64():
    fb = make_mel_spectrogram(40)
    wave = torch.randn(3, 7_000, generator=torch.Generator().manual_seed(0))
    assert isinstance(fb, torchaudio.transforms.MelSpectrogram)  # state_dict keys and export checks unchanged
    ours = fb(wave)
    assert ours.dtype == torch.float64
    reference = torchaudio.transforms.MelSpectrogram.forward(fb.double(), wave.double())
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-9)


def graph_breaks(fn, *args) -> tuple[int, int]:
    out = torch._dynamo.explain(fn)(*args)
    torch._dynamo.reset()
    return out.graph_count, out.graph_break_count


def test_front_end_and_dtdy_layer_compile_without_graph_breaks():
    fb = make_mel_spectrogram(40)
    assert graph_breaks(lambda wave: log_mel(fb, wave, True), torch.randn(2, 4_000)) == (1, 0)
    layer = DTDYConv2d(8, 16, 3, 2, freq_size=10)
    assert graph_breaks(layer, torch.randn(2, 8, 12, 10)) == (1, 0)
