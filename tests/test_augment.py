"""Augmentation: SNRs and convolutions against independent formulas, the recipe's draws, SpecAugment's masks."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import augment
from augment import Augmenter, AugmentError, add_noise, power_db, reverberate, spec_augment
from config import Config
from DatasetLoader import SpeakerBalancedSampler, TrainDataset, TrainList

RATE = 16000


def tone(samples: int, seed: int) -> np.ndarray:
    """A 'voice': harmonics with a slow amplitude envelope, float32."""
    t = np.arange(samples) / RATE
    rng = np.random.default_rng(seed)
    f0 = rng.uniform(90, 220)
    x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
    return (0.1 * (1.2 + np.sin(2 * np.pi * 3 * t)) * x).astype(np.float32)


def write(path: Path, audio: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A miniature musan_split (2 noise, 8 speech, 2 music files of 1 s) and RIR folder (2 rooms x 2 RIRs)."""
    root = tmp_path_factory.mktemp("aug")
    rng = np.random.default_rng(0)
    musan, rirs = root / "musan_split", root / "RIRS_NOISES" / "simulated_rirs"
    for kind, count in (("noise", 2), ("speech", 8), ("music", 2)):
        for i in range(count):
            audio = rng.normal(0, 0.01 * (i + 1), RATE) if kind == "noise" else tone(RATE, 100 + i)
            write(musan / kind / "src" / f"{kind}-{i:04d}" / "00000.wav", audio.astype(np.float32))
    for room in ("smallroom", "mediumroom"):
        for i in range(2):
            decay = np.exp(-np.arange(1600) / (200.0 * (i + 1)))
            write(rirs / room / f"Room{i:03d}" / f"{room}-{i}.wav", (rng.normal(0, 1, 1600) * decay).astype(np.float32))
    return musan, rirs


@pytest.mark.parametrize("snr", [0.0, 5.5, 13.0, 20.0])
def test_add_noise_gives_the_requested_snr(snr: float) -> None:
    clean = tone(8000, 1)
    noise = np.random.default_rng(2).normal(0, 0.3, (1, 8000)).astype(np.float32)
    out = add_noise(clean, noise, np.array([snr]))
    realised = power_db(clean) - power_db(out - clean)
    assert out.dtype == np.float32 and abs(realised - snr) < 0.5


def test_babble_sources_each_at_their_own_snr() -> None:
    clean = tone(4000, 3)
    noises = np.stack([tone(4000, s) * (s + 1) for s in range(3)])
    snr = np.array([13.0, 16.5, 20.0])
    expected = clean.astype(np.float64).copy()
    for noise, s in zip(noises, snr, strict=True):  # gain g with mean(clean^2) / mean((g noise)^2) = 10^(s / 10)
        expected += np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)
                            / 10 ** (s / 10)) * noise
    np.testing.assert_allclose(add_noise(clean, noises, snr), expected, atol=1e-5)


def test_reverberation_is_a_truncated_convolution_with_a_unit_energy_rir() -> None:
    rng = np.random.default_rng(4)
    clean = rng.normal(0, 0.1, 3000).astype(np.float32)
    rir = rng.normal(0, 1, 700) * np.exp(-np.arange(700) / 100)
    expected = np.convolve(clean, rir / np.sqrt(np.sum(rir ** 2)))[:3000]
    np.testing.assert_allclose(reverberate(clean, rir), expected, atol=1e-5)
    delta = np.zeros(50)
    delta[7] = 3.0  # a pure delay of 7 samples, any gain
    np.testing.assert_allclose(reverberate(clean, delta), np.concatenate([np.zeros(7), clean[:-7]]), atol=1e-6)


def test_draws_follow_the_recipe(sources: tuple[Path, Path]) -> None:
    aug = Augmenter(*sources)
    rng = np.random.default_rng(5)
    plans = [aug.draw(rng) for _ in range(1000)]
    kinds = Counter(p.kind for p in plans)
    assert set(kinds) == set(augment.KINDS) and all(150 < n < 250 for n in kinds.values())  # 1/5 each
    for plan in plans:
        if plan.kind == "none":
            assert plan.files == [] and plan.snr_db == []
        elif plan.kind == "reverb":
            assert len(plan.files) == 1 and "simulated_rirs" in plan.files[0] and plan.snr_db == []
        else:
            low, high = {"noise": (0, 15), "speech": (13, 20), "music": (5, 15)}[plan.kind]
            count = (3, 7) if plan.kind == "speech" else (1, 1)
            assert count[0] <= len(plan.files) <= count[1] and len(set(plan.files)) == len(plan.files)
            assert all(f"/{plan.kind}/" in f for f in plan.files)
            assert len(plan.snr_db) == len(plan.files) and all(low <= s <= high for s in plan.snr_db)
    assert {len(p.files) for p in plans if p.kind == "speech"} == {3, 4, 5, 6, 7}
    assert {Path(p.files[0]).parts[-3] for p in plans if p.kind == "reverb"} == {"smallroom", "mediumroom"}


@pytest.mark.parametrize("aug_prob", [0.0, 0.6, 1.0])
def test_aug_prob_is_the_share_of_augmented_crops(sources: tuple[Path, Path], aug_prob: float) -> None:
    aug = Augmenter(*sources, aug_prob=aug_prob)
    rng = np.random.default_rng(6)
    kinds = Counter(aug.draw(rng).kind for _ in range(2000))
    assert abs(1 - kinds["none"] / 2000 - aug_prob) < 0.04
    if aug_prob > 0:  # the four augmentations equally likely among the augmented crops
        augmented = 2000 - kinds["none"]
        assert all(abs(kinds[k] / augmented - 0.25) < 0.05 for k in augment.KINDS[1:])


def test_aug_prob_outside_zero_one_is_refused(sources: tuple[Path, Path]) -> None:
    with pytest.raises(augment.AugmentError, match="--aug_prob"):
        Augmenter(*sources, aug_prob=1.5)


def test_augmenter_realises_the_planned_snr(sources: tuple[Path, Path]) -> None:
    aug = Augmenter(*sources)
    clean = tone(6000, 6)
    checked = Counter()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        plan = aug.draw(rng)
        loaded = aug.load(plan, len(clean), rng)
        out = aug.apply(clean, plan, loaded)
        assert out.shape == clean.shape and out.dtype == np.float32
        if plan.kind == "none":
            assert out is clean
        elif plan.kind in ("noise", "music"):
            assert abs(power_db(clean) - power_db(out - clean) - plan.snr_db[0]) < 0.5
        elif plan.kind == "speech":
            for noise, snr in zip(loaded, plan.snr_db, strict=True):  # each talker at its own SNR
                single = add_noise(clean, noise[None], np.array([snr]))
                assert abs(power_db(clean) - power_db(single - clean) - snr) < 0.5
            assert loaded.shape == (len(plan.files), len(clean))
        checked[plan.kind] += 1
    assert set(checked) == set(augment.KINDS)


def test_missing_folders_are_one_clear_error(sources: tuple[Path, Path], tmp_path: Path) -> None:
    musan, rirs = sources
    with pytest.raises(AugmentError) as err:
        Augmenter(tmp_path / "nomusan", tmp_path / "norir")
    msg = str(err.value)
    assert f"--musan_path '{tmp_path / 'nomusan'}'" in msg and f"--rir_path '{tmp_path / 'norir'}'" in msg
    assert f"{tmp_path / 'nomusan' / 'noise'}, {tmp_path / 'nomusan' / 'speech'}" in msg
    assert "dataprep.py --split_musan" in msg and "dataprep.py --prepare_rir" in msg
    (tmp_path / "partial" / "speech").mkdir(parents=True)  # an empty folder counts as missing
    for kind in ("noise", "music"):
        write(tmp_path / "partial" / kind / "a.wav", np.zeros(100, np.float32))
    with pytest.raises(AugmentError, match=r"missing or without \.wav files: [^ ]*partial/speech\. Make") as err:
        Augmenter(tmp_path / "partial", rirs)
    assert "--rir_path" not in str(err.value)


def test_train_dataset_augments_reproducibly(sources: tuple[Path, Path], tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.wav"))
        write(Path(files[-1]), tone(RATE, 50 + i))
    train = TrainList(files=files, labels=np.array([0, 0, 1, 1]), speakers=["a", "b"], lines=[1, 2, 3, 4])
    clean = TrainDataset(train, 20)
    noisy = TrainDataset(train, 20, augmenter=Augmenter(*sources))
    sampler = SpeakerBalancedSampler(train.labels, 2, 10, 2, seed=1)
    items = list(sampler)
    first = [noisy[item][0] for item in items]
    assert all(torch.equal(a, noisy[item][0]) for a, item in zip(first, items, strict=True))  # same seed, same crop
    assert any(not torch.equal(a, clean[item][0]) for a, item in zip(first, items, strict=True))
    assert all(a.shape == (2, 20 * 160 + 240) and a.dtype == torch.float32 for a in first)


def test_spec_augment_masks_bands_with_zeros_in_training_only() -> None:
    feats = torch.randn(64, 40, 100) + 5.0  # no natural zeros
    generator = torch.Generator().manual_seed(0)
    out = spec_augment(feats, 2, 8, 1, 10, 1.0, generator=generator)
    zero = out == 0
    assert torch.equal(out[~zero], feats[~zero])
    for b in range(64):
        rows = zero[b].all(dim=1)  # masked mel bins: whole rows
        cols = zero[b].all(dim=0)  # masked frames: whole columns
        assert torch.equal(zero[b], rows[:, None] | cols[None, :])
        assert 1 <= int(rows.sum()) <= 16 and 1 <= int(cols.sum()) <= 10
    assert torch.equal(spec_augment(feats, 1, 8, 1, 10, 0.0), feats)
    half = spec_augment(feats, 1, 8, 1, 10, 0.5, generator=generator)
    changed = int((half == 0).flatten(1).any(1).sum())
    assert 16 < changed < 48  # about half of the 64 utterances
    cfg = Config()  # the --spec_* defaults: WeSpeaker's setting
    defaults = {"freq_masks": cfg.spec_freq_masks, "freq_width": cfg.spec_freq_width,
                "time_masks": cfg.spec_time_masks, "time_width": cfg.spec_time_width, "prob": cfg.spec_prob}
    assert defaults == {"freq_masks": 1, "freq_width": 8, "time_masks": 1, "time_width": 10, "prob": 0.6}
    masked = spec_augment(feats, **defaults, generator=generator) == 0
    assert 26 < int(masked.flatten(1).any(1).sum()) < 52  # about 0.6 of the 64 utterances
    assert int(masked.all(dim=2).sum(1).max()) <= 8 and int(masked.all(dim=1).sum(1).max()) <= 10


@pytest.mark.parametrize("bad", [{"freq_width": 0}, {"time_masks": -1}, {"prob": 1.5}])
def test_spec_augment_refuses_bad_settings(bad: dict) -> None:
    settings = {"freq_masks": 1, "freq_width": 8, "time_masks": 1, "time_width": 10, "prob": 0.6, **bad}
    with pytest.raises(AugmentError, match=r"--spec_freq_width and --spec_time_width >= 1 and --spec_prob in"):
        spec_augment(torch.randn(2, 40, 50), **settings)
