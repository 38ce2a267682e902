"""Audio that must not reach a model: NaN or infinite samples, truncated wavs, speech shorter than MIN_SAMPLES.

Training (load_crop, TrainDataset), evaluation (load_eval, TestDataset), the API and the activation maps refuse each
of them with an AudioError naming the file (and the list line when there is one).
"""

import numpy as np
import pytest
import soundfile

import speakerActivationMap
from dtdysv.data.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, load_crop, load_eval, read_audio
from dtdysv.data.lists import TrainList, TrialList
from DatasetLoader import TestDataset as EvalDataset
from DatasetLoader import TrainDataset
from speakerapi import SpeakerVerifier


def write_float_wav(path, audio, rate=SAMPLE_RATE):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(audio, dtype=np.float32), rate, subtype="FLOAT")
    return path


def noise(samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)


def verifier():
    """A SpeakerVerifier whose 'model' returns each waveform's mean in 4 values: cheap, and checks nothing."""
    return SpeakerVerifier(lambda waves: np.repeat(waves.mean(axis=1, keepdims=True), 4, axis=1), 4)


@pytest.fixture(params=[np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def nonfinite_wav(request, tmp_path):
    audio = noise(SAMPLE_RATE)
    audio[12345] = request.param
    return write_float_wav(tmp_path / "spk" / "bad.wav", audio)


def test_nonfinite_samples_are_refused_by_every_reader(nonfinite_wav):
    path = str(nonfinite_wav)
    readers = [lambda: read_audio(path), lambda: load_eval(path, 0, 1), lambda: load_eval(path, 20, 3),
               lambda: verifier().embed(path), lambda: speakerActivationMap._load_wave(path)]
    for read in readers:
        with pytest.raises(AudioError, match=r"'.*bad.wav' holds NaN or infinite samples \(the first at sample 12345"):
            read()
    # a crop that covers the bad sample; the reading is partial, so only what is read is checked
    with pytest.raises(AudioError, match="holds NaN or infinite samples"):
        load_crop(path, 98, np.random.default_rng(0))  # 15,920 of 16,000 samples: every crop covers sample 12345


def test_nonfinite_waveform_arrays_are_refused_by_the_api():
    sv = verifier()
    wave = noise(SAMPLE_RATE)
    wave[7] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        sv.embed(wave)
    with pytest.raises(AudioError, match="NaN or infinite"):
        sv.verify(noise(SAMPLE_RATE), wave, 0.5)


def test_nonfinite_training_and_test_files_are_named_with_their_list_line(nonfinite_wav, tmp_path):
    train = TrainList(files=[str(nonfinite_wav)] * 2, labels=np.array([0, 0]), speakers=["spk"], lines=[3, 4],
                      path="train_list.txt")
    with pytest.raises(AudioError, match=r"bad.wav' \(line 3 of 'train_list.txt'\) holds NaN"):
        TrainDataset(train, 98)[((0, 1), 0)]
    trials = TrialList(path="trials.txt", labels=None, enroll=["spk/ok.wav"], test=["spk/bad.wav"], lines=[7])
    with pytest.raises(AudioError, match=r"holds NaN(.|\n)*first listed on line 7 of 'trials.txt'"):
        EvalDataset(["spk/bad.wav"], tmp_path, 0, 1, trials=trials)[0]


def test_a_truncated_wav_is_refused(tmp_path):
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, noise(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) // 2])  # the header still promises 1 s
    for read in (lambda: read_audio(cut), lambda: load_eval(str(cut), 20, 2), lambda: verifier().embed(cut),
                 lambda: load_crop(str(cut), 20, np.random.default_rng(0), where="line 2 of 'l.txt'")):
        with pytest.raises(AudioError, match=r"'.*cut.wav'.* is truncated: its header promises 32000 bytes"):
            read()
    assert len(read_audio(whole)) == SAMPLE_RATE  # the intact file reads


def test_a_wav_written_to_a_pipe_is_not_called_truncated(tmp_path):
    path = tmp_path / "piped.wav"
    soundfile.write(path, noise(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"  # the length a streaming writer leaves unfilled
    path.write_bytes(bytes(data))
    assert len(read_audio(path)) == SAMPLE_RATE


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000])
def test_speech_shorter_than_the_minimum_is_refused_alike_everywhere(tmp_path, rate):
    short = write_float_wav(tmp_path / "short.wav", noise(MIN_SAMPLES * rate // SAMPLE_RATE - 1), rate)
    resample = rate != SAMPLE_RATE
    readers = [lambda: load_crop(str(short), 20, np.random.default_rng(0), resample),
               lambda: load_eval(str(short), 20, 2, resample), lambda: load_eval(str(short), 0, 1, resample),
               lambda: SpeakerVerifier(verifier().backend, 4, resample).embed(short)]
    for read in readers:
        with pytest.raises(AudioError, match=r"'.*short.wav' is 0.0\d+ s long, shorter than the 0.1 s"):
            read()
    ok = write_float_wav(tmp_path / "ok.wav", noise(MIN_SAMPLES * rate // SAMPLE_RATE), rate)
    assert load_crop(str(ok), 20, np.random.default_rng(0), resample).shape == (3440,)  # repeated to length
    assert load_eval(str(ok), 0, 1, resample).shape == (1, MIN_SAMPLES)
    assert verifier().embed(noise(MIN_SAMPLES)).shape == (4,)
    with pytest.raises(AudioError, match=f"at least {MIN_SAMPLES}"):
        verifier().embed(noise(MIN_SAMPLES - 1))


def test_short_noise_and_rirs_stay_readable_for_augmentation(tmp_path):
    rir = write_float_wav(tmp_path / "rir.wav", noise(400))  # RIRs and noise are not speech: no minimum
    assert len(read_audio(rir)) == 400
