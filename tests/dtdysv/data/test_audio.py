"""Audio reading and writing (audio.py): partial reads, evenly spaced test crops, resampling, clear errors."""

import numpy as np
import pytest
import soundfile

from dtdysv.data.audio import AudioError, crop_samples, load_crop, load_eval, read_audio, write_wav


def write_test_wav(path, samples, rate=16000, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (samples, channels) if channels > 1 else samples)
    soundfile.write(path, data, rate, subtype="PCM_16")
    return path


def test_crop_sizes():
    assert crop_samples(200) == 32240 and crop_samples(1) == 400


def test_crop_reads_the_requested_window(tmp_path):
    path = tmp_path / "a.wav"
    samples = crop_samples(20) * 3
    soundfile.write(path, (np.arange(samples) % 30000).astype(np.int16), 16000, subtype="PCM_16")
    crop = load_crop(str(path), 20, np.random.default_rng(1))
    assert crop.shape == (crop_samples(20),) and crop.dtype == np.float32
    ints = np.round(crop * 32768).astype(np.int64)
    assert np.all(np.diff(ints) == 1)  # one contiguous window of the ramp
    short = write_test_wav(tmp_path / "short.wav", 2000)  # above the minimum (0.1 s), below the crop
    crop = load_crop(str(short), 20, np.random.default_rng(1))
    full = soundfile.read(short, dtype="float32")[0]
    assert crop.shape == (crop_samples(20),) and np.array_equal(crop[2000:3440], full[:1440])


def test_eval_crops_are_evenly_spaced(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, (np.arange(20000) % 30000).astype(np.int16), 16000, subtype="PCM_16")
    crops = load_eval(str(path), 50, 5)
    assert crops.shape == (5, crop_samples(50))
    starts = np.round(crops[:, 0] * 32768).astype(int)
    assert starts[0] == 0 and starts[-1] == 20000 - crop_samples(50)
    assert load_eval(str(path), 0, 5).shape == (1, 20000)


@pytest.mark.parametrize("rate, channels, expected", [(8000, 1, "8000 Hz with 1 channel"),
                                                      (16000, 2, "16000 Hz with 2 channel")])
def test_wrong_format_is_refused(tmp_path, rate, channels, expected):
    path = write_test_wav(tmp_path / "a.wav", 4000, rate, channels)
    with pytest.raises(AudioError, match=expected):
        load_crop(str(path), 10, np.random.default_rng(0))


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_reads_the_right_window_at_16k(tmp_path, rate):
    path = tmp_path / "a.wav"
    soundfile.write(path, sine(440.0, 1.5, rate), rate, subtype="FLOAT")
    need = crop_samples(20)
    crop = load_crop(str(path), 20, np.random.default_rng(3), resample=True)
    span = int(np.ceil(need * rate / 16000))
    start = int(np.random.default_rng(3).integers(0, int(1.5 * rate) - span + 1))  # the crop's first file sample
    expected = 0.5 * np.sin(2 * np.pi * 440.0 * (start / rate + np.arange(need) / 16000))
    assert crop.shape == (need,) and crop.dtype == np.float32 and start > 64
    np.testing.assert_allclose(crop, expected, atol=0.01)  # right place, right rate, no edge transients
    whole = load_eval(str(path), 0, 1, resample=True)
    assert abs(whole.shape[1] - 24000) <= 1


def test_stereo_is_averaged_when_resampling(tmp_path):
    path = tmp_path / "s.wav"
    left, right = sine(300.0, 0.5, 16000), sine(500.0, 0.5, 16000)
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_eval(str(path), 0, 1, resample=True)[0], (left + right) / 2, atol=1e-6)


def sine(freq, seconds, rate, phase=0.0):
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


def test_write_wav_is_16_bit_16k_and_atomic(tmp_path):
    path = tmp_path / "deep" / "out.wav"
    ramp = np.arange(-3000, 3000, dtype=np.int16)
    write_wav(path, ramp)
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "WAV", "PCM_16")
    assert np.array_equal(soundfile.read(path, dtype="int16")[0], ramp)  # int16 exactly as given
    write_wav(path, np.array([-2.0, -0.5, 0.25, 1.0, 3.0], dtype=np.float32))  # replaces the file
    back = soundfile.read(path, dtype="int16")[0]
    assert back.tolist() == [-32768, -16384, 8192, 32767, 32767]  # clipped to [-1, 1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]  # no temporary left
    np.testing.assert_allclose(read_audio(path), back / 32768)
