"""The evaluation back end: protocols, embedding cache, several lists, score norm wiring, DET, extraction, and the
real VoxCeleb1-O list end to end. Metrics and scoring maths against independent references."""

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

import trainSpeakerNet
import tuneThreshold as tt
from config import Config, parse_args
from conftest import ROOT
from dtdysv.data.audio import load_eval
from dtdysv.data.lists import read_trial_list
from dtdysv.evaluation import embed as embedding
from dtdysv.evaluation import normalise as normalisation
from dtdysv.evaluation import pipeline as ev
from dtdysv.evaluation.score import NEAR_DISTANCE
from dtdysv.runtime import checkpoint as ckpt
from dtdysv.runtime import setup as runtime
from SpeakerNet import Embedder
from tests.scoring_reference import score_trials

VOX1_O = ROOT.parent / "shared" / "data" / "voxceleb1_O_cleaned_trials.txt"
RATE = 16000


pytestmark = pytest.mark.usefixtures("one_thread")

# ---- metrics against full-curve references -------------------------------------------------------------------


def adversarial_trials(kind: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Score/label patterns that stress the candidate-only metrics: overlaps, long one-class runs, ties."""
    n = int(rng.integers(3, 300))
    if kind == 0:
        labels = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
        scores = rng.normal(size=n) + rng.uniform(0, 3) * labels
    elif kind == 1:  # blocks of one class: collinear ROC runs around the crossing
        labels = np.repeat(rng.integers(0, 2, n // 7 + 1), 7)[:n]
        scores = np.arange(n, dtype=float) + rng.integers(-3, 3, n)
    elif kind == 2:  # heavy ties mixing both classes
        labels = rng.integers(0, 2, n)
        scores = rng.integers(0, 5, n).astype(float) + labels * rng.integers(0, 2, n)
    else:  # a periodic pattern with ties: long collinear stretches
        labels = np.tile([1, 0, 0], n // 3 + 1)[:n]
        scores = np.repeat(np.arange(n // 2 + 1), 2)[:n].astype(float) * rng.choice([-1.0, 1.0])
    labels[:2] = [0, 1]  # both classes present
    return scores, labels


def test_metrics_match_full_curve_references_on_adversarial_cases():
    rng = np.random.default_rng(0)
    settings = [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.5, 1.0, 1.0), (0.3, 2.0, 0.5), (0.9, 1.0, 3.0)]
    for case in range(240):
        scores, labels = adversarial_trials(case % 4, rng)
        fpr, tpr, _ = roc_curve(labels, scores)  # voxceleb_trainer's EER on sklearn's (dropped) ROC
        i = np.nanargmin(np.abs((1 - tpr) - fpr))
        metrics = tt.compute_metrics(scores, labels)
        assert metrics["eer_vt_percent"] == 100 * max(fpr[i], 1 - tpr[i]), case
        candidates = np.append(np.unique(scores), np.inf)  # brute force over every threshold
        fnr = np.array([np.mean(scores[labels == 1] < t) for t in candidates])
        far = np.array([np.mean(scores[labels == 0] >= t) for t in candidates])
        for p, c_miss, c_fa in settings:
            cost = c_miss * p * fnr + c_fa * (1 - p) * far
            dcf, threshold = tt.compute_min_dcf(scores, labels, p, c_miss, c_fa)
            assert dcf == pytest.approx(cost.min() / min(c_miss * p, c_fa * (1 - p)), rel=1e-12, abs=1e-15), case
            assert threshold == candidates[np.argmin(cost)], case


def test_voxceleb_trainer_eer_with_long_runs_needs_a_growing_window():
    # thousands of same-class trials on each side of the crossing: the nearest kept ROC points are far away
    labels = np.concatenate([np.zeros(3000), np.ones(2500), np.zeros(2000), np.ones(3500)]).astype(int)
    scores = np.arange(labels.size, dtype=float)
    fpr, tpr, _ = roc_curve(labels, scores)
    i = np.nanargmin(np.abs((1 - tpr) - fpr))
    assert tt.compute_metrics(scores, labels)["eer_vt_percent"] == 100 * max(fpr[i], 1 - tpr[i])


def test_rates_at_hand_case():
    scores, labels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0, 0, 1, 0, 1, 1]
    fpr, fnr = tt.rates_at(scores, labels, [0.3, 0.45, np.inf, -1.0])
    np.testing.assert_allclose(fpr, [1 / 3, 0, 0, 1])
    np.testing.assert_allclose(fnr, [0, 1 / 3, 1, 0])


# ---- scoring --------------------------------------------------------------------------------------------------


def test_paper_score_float32_is_accurate_for_near_identical_crops():
    g = torch.Generator().manual_seed(0)
    enroll = F.normalize(torch.randn(50, 4, 256, generator=g), dim=-1)
    noise = torch.randn(50, 4, 256, generator=g) * torch.logspace(-6, -1, 50)[:, None, None]
    test = F.normalize(enroll + noise, dim=-1)  # from identical to clearly different crops
    got = score_trials(enroll, test, "paper")
    assert got.dtype == torch.float32
    expected = torch.stack([-torch.cdist(e.double(), t.double()).mean() for e, t in zip(enroll, test, strict=True)])
    # the plain float32 matmul form is off by ~3e-4 for the nearest pairs; the recomputed ones are exact
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6)
    assert NEAR_DISTANCE < 0.1


# ---- a tiny corpus and model -----------------------------------------------------------------------------------


def write_wav(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * (seed % 7)) * t) + 0.05 * rng.standard_normal(t.size)
    soundfile.write(path, wave.astype(np.float32), RATE, subtype="PCM_16")


TEST_LENGTHS = {"a/v1/1.wav": 0.5, "a/v1/2.wav": 0.5, "a/v2/3.wav": 0.62, "b/v1/1.wav": 0.5, "b/v2/2.wav": 0.62,
                "c/v1/1.wav": 0.45, "c/v1/2.wav": 0.7}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcorpus")
    for i, (name, seconds) in enumerate(TEST_LENGTHS.items()):
        write_wav(root / "test" / name, seconds, i)
    train_lines = []
    for spk in range(4):
        for utt in range(3):
            rel = f"s{spk}/v/{utt}.wav"
            write_wav(root / "train" / rel, 0.4 + 0.05 * utt, 100 + 10 * spk + utt)
            train_lines.append(f"s{spk} {rel}")
    (root / "train_list.txt").write_text("\n".join(train_lines) + "\n")
    names = list(TEST_LENGTHS)
    labeled = [(1, names[0], names[1]), (0, names[0], names[3]), (1, names[3], names[4]), (0, names[2], names[5]),
               (1, names[5], names[6]), (0, names[1], names[6]), (1, names[2], names[1]), (0, names[4], names[5])]
    (root / "list1.txt").write_text("".join(f"{lab} {e} {t}\n" for lab, e, t in labeled))
    (root / "unlabeled.txt").write_text(f"{names[6]} {names[0]}\n{names[2]} {names[4]}\n")
    (root / "other").mkdir()
    (root / "other" / "list1.txt").write_text(f"1 {names[0]} {names[2]}\n0 {names[4]} {names[6]}\n")
    return root


def make_cfg(corpus: Path, save: Path, **overrides) -> Config:
    values = {"model": "ResNet34_quarter", "encoder_type": "SAP", "nOut": 8, "n_mels": 16, "trainfunc": "softmax",
              "nClasses": 4, "nPerSpeaker": 1, "eval_frames": 10, "num_eval": 3, "nDataLoaderThread": 0,
              "test_path": str(corpus / "test"), "train_list": str(corpus / "train_list.txt"),
              "train_path": str(corpus / "train"), "test_list": [str(corpus / "list1.txt")],
              "save_path": str(save), "device": "cpu", "norm_top_n": 2}
    values.update(overrides)
    return Config(**values)


def make_embedder(cfg: Config, seed: int = 0) -> tuple[Embedder, bool]:
    """(an embedder of the configured model with seeded random weights, its loss's test_normalize)."""
    torch.manual_seed(seed)
    net = runtime.build_net(cfg)
    return Embedder(net.model, torch.device("cpu")), runtime.test_normalize(net.loss)


def lists(cfg: Config) -> list:
    return [read_trial_list(p, cfg.test_path) for p in cfg.test_list]


def result(cfg: Config) -> Path:
    return Path(cfg.save_path) / "result"


# ---- protocols -------------------------------------------------------------------------------------------------


def test_whole_utterances_are_batched_by_equal_length_and_equal_single_file_embeddings(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, eval_frames=0)
    embedder, normalize = make_embedder(cfg)
    files = list(TEST_LENGTHS)
    batches = embedding._equal_length_batches(files, cfg.test_path)
    assert sorted(len(b) for b in batches) == [1, 1, 2, 3]  # 3 x 0.5 s, 2 x 0.62 s, two singles
    got = embedding.embed_files(embedder, files, cfg.test_path, cfg, show_progress=False)
    assert got.shape == (len(files), 1, 8)
    model = embedder.model.eval()
    with torch.no_grad():
        single = torch.stack([model(torch.from_numpy(load_eval(str(corpus / "test" / f), 0, 1))) for f in files])
    torch.testing.assert_close(got, single, rtol=1e-4, atol=1e-5)


def test_paper_protocol_embeds_evenly_spaced_crops(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path)
    embedder, normalize = make_embedder(cfg)
    files = list(TEST_LENGTHS)[:3]
    got = embedding.embed_files(embedder, files, cfg.test_path, cfg, show_progress=False)
    assert got.shape == (3, 3, 8)
    with torch.no_grad():
        crops = [torch.from_numpy(load_eval(str(corpus / "test" / f), 10, 3)) for f in files]
        torch.testing.assert_close(got, torch.stack([embedder.model(c) for c in crops]), rtol=1e-4, atol=1e-5)


# ---- evaluate: cache, several lists, results -------------------------------------------------------------------


def test_several_lists_embed_once_and_write_every_result(corpus, tmp_path, caplog):
    extra = [str(corpus / "unlabeled.txt"), str(corpus / "other" / "list1.txt")]
    cfg = make_cfg(corpus, tmp_path, test_list=[str(corpus / "list1.txt"), *extra])
    embedder, normalize = make_embedder(cfg)
    with caplog.at_level("INFO"):
        metrics = ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False,
                              checkpoint="ckpt.model")
    assert "embedded 7 test files" in caplog.text  # the union of the three lists, once
    out = result(cfg)
    assert {p.name for p in out.iterdir()} == {"list1", "unlabeled", "list1_2", "embeddings.npz"}
    assert list(metrics) == ["list1", "unlabeled", "list1_2"]
    for name in metrics:
        saved = json.loads((out / name / "metrics.json").read_text())
        assert saved == metrics[name] and saved["list"] == name and saved["role"] == "test (held out)"
        assert saved["checkpoint"] == "ckpt.model" and list(saved["variants"]) == ["raw"]
    raw = metrics["list1"]["variants"]["raw"]
    assert raw["n_trials"] == 8 and raw["protocol"] == "paper" and raw["scores_file"] == "scores.txt"
    for key in ("eer_percent", "eer_vt_percent", "eer_threshold", "min_dcf_p0.01", "min_dcf_p0.05",
                "min_dcf_p0.05_threshold", "dcf_c_miss", "dcf_c_fa"):
        assert key in raw
    unlabeled = metrics["unlabeled"]["variants"]["raw"]
    assert "eer_percent" not in unlabeled and unlabeled["n_trials"] == 2
    assert metrics["list1_2"]["variants"]["raw"]["n_trials"] == 2 and metrics["list1_2"]["test_list"] == extra[1]
    assert {p.name for p in (out / "list1").iterdir()} == {"scores.txt", "metrics.json", "det.png"}
    assert {p.name for p in (out / "unlabeled").iterdir()} == {"scores.txt", "metrics.json"}  # no curve to draw
    assert [line.split()[1:] for line in (out / "list1" / "scores.txt").read_text().splitlines()] == [
        line.split() for line in (corpus / "list1.txt").read_text().splitlines()]
    assert all(len(line.split()) == 3 for line in (out / "unlabeled" / "scores.txt").read_text().splitlines())
    png = (out / "list1" / "det.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # the scores are the paper protocol's, from the cached raw embeddings (loss normalises them)
    meta, arrays = embedding.load_npz(out / "embeddings.npz")
    assert meta["protocol"] == "paper" and meta["num_eval"] == 3 and meta["checkpoint"] == "ckpt.model"
    assert metrics["list1"]["weights"] == meta["weights"] and metrics["list1"]["embeddings"]["num_eval"] == 3
    assert sorted(arrays["names"].tolist()) == sorted(TEST_LENGTHS) and arrays["embeddings"].shape == (7, 3, 8)
    table = dict(zip(arrays["names"].tolist(), F.normalize(torch.from_numpy(arrays["embeddings"]), dim=-1),
                     strict=True))
    for line in (out / "list1" / "scores.txt").read_text().splitlines():
        score, _, e, t = line.split()
        assert float(score) == pytest.approx(-torch.cdist(table[e].double(), table[t].double()).mean().item(),
                                             abs=2e-6)


def test_lists_evaluated_one_after_the_other_keep_their_own_folders(corpus, tmp_path, caplog):
    first_cfg = make_cfg(corpus, tmp_path)
    embedder, normalize = make_embedder(first_cfg)
    ev.evaluate(embedder, lists(first_cfg), first_cfg, result(first_cfg), normalize, show_progress=False)
    first = {p.name: p.read_bytes() for p in (result(first_cfg) / "list1").iterdir()}
    assert set(first) == {"scores.txt", "metrics.json", "det.png"}
    second_cfg = make_cfg(corpus, tmp_path, test_list=[str(corpus / "unlabeled.txt")])
    with caplog.at_level("INFO"):
        second = ev.evaluate(embedder, lists(second_cfg), second_cfg, result(second_cfg), normalize,
                             show_progress=False)
    assert "reusing the cached embeddings" in caplog.text and list(second) == ["unlabeled"]
    assert {p.name: p.read_bytes() for p in (result(first_cfg) / "list1").iterdir()} == first
    assert sorted(p.name for p in result(first_cfg).iterdir()) == ["embeddings.npz", "list1", "unlabeled"]
    # a list of the same name evaluated alone rewrites only its own folder
    other_cfg = make_cfg(corpus, tmp_path, test_list=[str(corpus / "other" / "list1.txt")])
    unlabeled = (result(first_cfg) / "unlabeled" / "scores.txt").read_bytes()
    ev.evaluate(embedder, lists(other_cfg), other_cfg, result(other_cfg), normalize, show_progress=False)
    assert len((result(first_cfg) / "list1" / "scores.txt").read_text().splitlines()) == 2
    assert (result(first_cfg) / "unlabeled" / "scores.txt").read_bytes() == unlabeled


def test_cache_is_reused_and_rebuilt_when_stale(corpus, tmp_path, caplog):
    cfg = make_cfg(corpus, tmp_path)
    embedder, normalize = make_embedder(cfg)
    first = ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False)
    caplog.clear()
    with caplog.at_level("INFO"):
        again = ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False)
    assert "reusing the cached embeddings of all 7 files" in caplog.text and "embedded" not in caplog.text
    assert again == first and list(again) == ["list1"]
    caplog.clear()
    other, other_normalize = make_embedder(cfg, seed=1)  # other weights
    with caplog.at_level("INFO"):
        ev.evaluate(other, lists(cfg), cfg, result(cfg), other_normalize, show_progress=False)
    assert "does not fit (weights:" in caplog.text and "embedded 7 test files" in caplog.text
    caplog.clear()
    whole = make_cfg(corpus, tmp_path, eval_frames=0)
    with caplog.at_level("INFO"):
        metrics = ev.evaluate(other, lists(whole), whole, result(whole), other_normalize, show_progress=False)
    assert "protocol: cached 'paper', now 'whole'" in caplog.text
    assert metrics["list1"]["variants"]["raw"]["protocol"] == "whole"
    assert embedding.load_npz(result(whole) / "embeddings.npz")[1]["embeddings"].shape == (7, 1, 8)


def test_score_from_cache_needs_no_model_and_refuses_a_stale_cache(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path)
    embedder, normalize = make_embedder(cfg)
    path = tmp_path / "weights.model"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": embedder.model.state_dict()}, path)
    ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False, checkpoint=path)
    folder = result(cfg) / "list1"
    scores = (folder / "scores.txt").read_text()
    metrics = (folder / "metrics.json").read_text()
    (folder / "scores.txt").unlink()
    ev.score_from_cache(cfg, lists(cfg), result(cfg), checkpoint=path)
    assert (folder / "scores.txt").read_text() == scores
    assert (folder / "metrics.json").read_text() == metrics

    torch.manual_seed(3)
    other = tmp_path / "other.model"
    ckpt.atomic_save({"format": ckpt.FORMAT, "model": make_embedder(cfg, seed=3)[0].model.state_dict()}, other)
    with pytest.raises(ev.EvalError, match="weights differ from those in '.*other.model'"):
        ev.score_from_cache(cfg, lists(cfg), result(cfg), checkpoint=other)
    with pytest.raises(ev.EvalError, match="eval_frames: cached 10, now 20"):
        ev.score_from_cache(make_cfg(corpus, tmp_path, eval_frames=20), lists(cfg), result(cfg))
    more = make_cfg(corpus, tmp_path, test_list=[str(corpus / "list1.txt")])
    trials = lists(more)
    trials[0].test[0] = "z/new/9.wav"
    with pytest.raises(ev.EvalError, match="1 files of the trial lists are not in it, e.g. 'z/new/9.wav'"):
        ev.score_from_cache(more, trials, result(cfg))
    with pytest.raises(ev.EvalError, match="no embedding cache"):
        ev.score_from_cache(cfg, lists(cfg), tmp_path / "nowhere")
    with pytest.raises(ev.EvalError, match="needs the cohort cache"):
        ev.score_from_cache(make_cfg(corpus, tmp_path, score_norm="asnorm"), lists(cfg), result(cfg))


# ---- score normalisation wiring ---------------------------------------------------------------------------------


def reference_norm(score: float, e: torch.Tensor, t: torch.Tensor, cohort: torch.Tensor,
                   top_n: int) -> tuple[float, float]:
    """Direct, per-trial AS-norm: cosine against every cohort vector one at a time, top-N mean and std.

    Returns the normalised score and its sensitivity to an error in the cosines, 0.5 (1 / s_e + 1 / s_t)."""
    stats = []
    for x in (e, t):
        cos = sorted((F.cosine_similarity(x, c, dim=0).item() for c in cohort), reverse=True)[:top_n]
        stats.append((np.mean(cos), np.std(cos)))
    (me, se), (mt, st) = stats
    return 0.5 * ((score - me) / se + (score - mt) / st), 0.5 * (1 / se + 1 / st)


@pytest.mark.parametrize("method, top_n", [("asnorm", 2), ("snorm", 4)])
def test_score_norm_wiring_matches_a_direct_computation(corpus, tmp_path, method, top_n):
    cfg = make_cfg(corpus, tmp_path, score_norm=method, norm_top_n=2, norm_cohort_utts=2)
    embedder, normalize = make_embedder(cfg)
    metrics = ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False)
    assert list(metrics["list1"]["variants"]) == ["raw", method]
    norm = metrics["list1"]["variants"][method]
    assert (norm["method"], norm["top_n"], norm["cohort_speakers"], norm["score"]) == (method, top_n, 4,
                                                                                       normalisation.NORM_SCORE)
    assert "eer_percent" in norm and norm["scores_file"] == f"scores.{method}.txt"
    # the cohort, independently: utterances 0 and 2 (evenly spread) of each speaker, crops normalised, mean, unit
    model = embedder.model.eval()

    def vector(path: Path) -> torch.Tensor:
        with torch.no_grad():
            crops = F.normalize(model(torch.from_numpy(load_eval(str(path), 10, 3))), dim=-1)
        return F.normalize(crops.mean(0), dim=0)

    cohort = torch.stack([(vector(corpus / f"train/s{s}/v/0.wav") + vector(corpus / f"train/s{s}/v/2.wav")) / 2
                          for s in range(4)])
    cached = torch.from_numpy(embedding.load_npz(result(cfg) / "cohort.npz")[1]["embeddings"])
    torch.testing.assert_close(cached, cohort, rtol=1e-4, atol=1e-5)
    # the trial side from the cached crop embeddings, in float64. A random network's cosines are all close to 1, so
    # the top-N std is tiny (1e-5) and amplifies the float32 rounding of the cosines (about 1e-6): an error e in the
    # cosines moves (s - mu) / sd by up to (2 + |score|) e / sd (e in s and in mu, |score| e in sd), which is the
    # tolerance with e = 1e-6 (plus 1e-3 relative).
    _, arrays = embedding.load_npz(result(cfg) / "embeddings.npz")
    crops = F.normalize(torch.from_numpy(arrays["embeddings"]).double(), dim=-1)
    files = dict(zip(arrays["names"].tolist(), F.normalize(crops.mean(1), dim=-1), strict=True))
    lines = (result(cfg) / "list1" / f"scores.{method}.txt").read_text().splitlines()
    assert len(lines) == 8
    for line in lines:
        score, _, e, t = line.split()
        raw = F.cosine_similarity(files[e], files[t], dim=0).item()  # paper protocol: the cosine is normalised
        expected, sensitivity = reference_norm(raw, files[e], files[t], cached.double(), top_n)
        assert float(score) == pytest.approx(expected, rel=1e-3, abs=1e-6 * sensitivity * (2 + abs(expected)))


def test_norm_top_n_larger_than_the_cohort_is_refused(corpus, tmp_path):
    cfg = make_cfg(corpus, tmp_path, score_norm="asnorm", norm_top_n=300)
    embedder, normalize = make_embedder(cfg)
    with pytest.raises(ev.EvalError, match="--norm_top_n 300 .* has 4"):
        ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False)


# ---- extraction and options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_frames, crops, shape", [(0, False, (3, 8)), (10, False, (3, 8)),
                                                     (10, True, (3, 3, 8))])
def test_extract_writes_names_embeddings_and_labels(corpus, tmp_path, eval_frames, crops, shape):
    files = list(TEST_LENGTHS)[:3]
    (tmp_path / "files.txt").write_text("".join(f"spk{i} {f}\n" for i, f in enumerate(files + files[:1])))
    cfg = make_cfg(corpus, tmp_path, eval_frames=eval_frames, extract=str(tmp_path / "files.txt"),
                   extract_out=str(tmp_path / "emb.npz"), extract_crops=crops)
    embedder, normalize = make_embedder(cfg)
    out = embedding.run_extract(cfg, embedder, show_progress=False)
    meta, arrays = embedding.load_npz(out)
    assert arrays["names"].tolist() == files and arrays["labels"].tolist() == ["spk0", "spk1", "spk2"]
    assert arrays["embeddings"].shape == shape and arrays["embeddings"].dtype == np.float32
    expected = embedding.embed_files(embedder, files, cfg.test_path, cfg, show_progress=False)  # (F, C, D)
    expected = expected if crops else expected.mean(1)  # one vector per file: the mean of its crops
    np.testing.assert_allclose(arrays["embeddings"].reshape(expected.shape), expected.numpy(), rtol=1e-6)
    assert meta["protocol"] == ("whole" if eval_frames == 0 else "paper") and meta["normalised"] is False


@pytest.mark.parametrize("overrides, fragment", [
    ({"extract": "x.txt"}, "--extract <file list> and --extract_out"),
    ({"score_from_cache": True}, "use it with --eval"),
    ({"score_norm": "asnorm", "norm_top_n": 1}, "--norm_top_n must be >= 2"),
    ({"norm_cohort_utts": 0}, "--norm_cohort_utts must be >= 1"),
    ({"eval_frames": -1}, "--eval_frames must be >= 0"),
])
def test_inconsistent_options_are_refused(corpus, tmp_path, overrides, fragment):
    with pytest.raises(ev.EvalError, match=fragment.replace("<", ".").replace(">", ".")):
        ev.check_eval_options(make_cfg(corpus, tmp_path, **overrides))


# ---- the real VoxCeleb1-O list, end to end -----------------------------------------------------------------------


def wav_bytes(pcm: np.ndarray) -> bytes:
    """A 16 kHz mono 16-bit PCM WAV file of ``pcm`` (int16), header by hand: 5x faster than soundfile here."""
    data = pcm.astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(data))
    return header + data


@pytest.mark.slow
@pytest.mark.skipif(not VOX1_O.is_file(), reason=f"the VoxCeleb1-O cleaned list is not at {VOX1_O} (../shared/data)")
def test_eval_on_the_real_voxceleb1_o_list(tmp_path):
    trials = [line.split() for line in VOX1_O.read_text().splitlines() if line.strip()]
    files = list(dict.fromkeys(f for _, e, t in trials for f in (e, t)))
    assert (len(trials), len(files)) == (37611, 4708)
    for folder in {str(Path(f).parent) for f in files}:
        (tmp_path / "wav" / folder).mkdir(parents=True)
    noise = (3000 * np.random.default_rng(0).standard_normal(RATE)).astype("<i2")
    for i, rel in enumerate(files):  # 0.2-0.5 s slices of one noise signal, written as raw 16-bit WAV (fast)
        (tmp_path / "wav" / rel).write_bytes(wav_bytes(np.roll(noise, 97 * i)[: int(RATE * (0.2 + 0.05 * (i % 7)))]))
    # the model dominates the run: the smallest ResNet with 8 mel bins and 2 crops of 5 frames per file
    args = ["--model", "ResNet34_quarter", "--encoder_type", "SAP", "--nOut", "16", "--n_mels", "8",
            "--trainfunc", "softmax", "--nClasses", "4", "--eval_frames", "5", "--num_eval", "2",
            "--nDataLoaderThread", "0", "--test_path", str(tmp_path / "wav"), "--test_list", str(VOX1_O),
            "--save_path", str(tmp_path / "exp"), "--device", "cpu"]
    cfg = parse_args(args)
    torch.manual_seed(0)
    net = runtime.build_net(cfg)
    ckpt.atomic_save({"format": ckpt.FORMAT, "version": 1, "epoch": 0, "model": net.model.state_dict(),
                      "loss": net.loss.state_dict(), "config": cfg.to_dict()}, tmp_path / "random.model")
    assert trainSpeakerNet.main([*args, "--eval", "--initial_model", str(tmp_path / "random.model")]) == 0
    folder = tmp_path / "exp" / "result" / VOX1_O.stem
    lines = (folder / "scores.txt").read_text().splitlines()
    assert len(lines) == 37611
    assert [line.split()[1:] for line in lines[:3]] == trials[:3]
    metrics = json.loads((folder / "metrics.json").read_text())["variants"]["raw"]
    assert (metrics["n_trials"], metrics["n_files"], metrics["n_target"]) == (37611, 4708, 18802)
    assert 0 <= metrics["eer_percent"] <= 100 and metrics["protocol"] == "paper"


# ---- every stage reruns from its input files alone -------------------------------------------------------------


def test_every_stage_reruns_from_its_input_files(corpus, tmp_path, caplog):
    from dtdysv.evaluation.metrics import rerun_metrics
    from dtdysv.evaluation.plot import plot_list, plot_stage
    from dtdysv.evaluation.results import EvalRun, list_results, read_scores
    from dtdysv.evaluation.score import score_stage

    cfg = make_cfg(corpus, tmp_path, score_norm="asnorm", norm_cohort_utts=2,
                   test_list=[str(corpus / "list1.txt"), str(corpus / "other" / "list1.txt")])
    embedder, normalize = make_embedder(cfg)
    out = result(cfg)
    ev.evaluate(embedder, lists(cfg), cfg, out, normalize, show_progress=False, checkpoint="ckpt.model")
    first = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"list1/scores.asnorm.txt", "list1_2/scores.asnorm.txt", "cohort.npz", "list1/det.png"} <= set(first)

    # score and normalise stages: from embeddings.npz (and cohort.npz) alone, no model, no audio
    for name in first:
        if name.endswith(".txt"):
            (out / name).unlink()
    run = EvalRun(cfg, out, checkpoint="ckpt.model")
    stages = list_results(lists(cfg))
    score_stage(run, stages)
    normalisation.norm_stage(run, stages)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.txt")} == {
        k: v for k, v in first.items() if k.endswith(".txt")}
    saved = json.loads(first["list1/metrics.json"])
    assert stages[0].raw.scores_file == saved["variants"]["raw"]["scores_file"]
    assert stages[0].norm.info["top_n"] == 2 and stages[0].source["weights"] == saved["weights"]

    # metrics stage: metrics.json again from the score files it names
    rerun_metrics(run)
    assert (out / "list1" / "metrics.json").read_bytes() == first["list1/metrics.json"]
    assert (out / "list1_2" / "metrics.json").read_bytes() == first["list1_2/metrics.json"]
    # ... and it reads them: a score file with its scores negated gives that file's metrics, in its list only
    lines = [line.split() for line in (out / "list1" / "scores.txt").read_text().splitlines()]
    (out / "list1" / "scores.txt").write_text("".join(f"{-float(s):.6f} {lab} {e} {t}\n" for s, lab, e, t in lines))
    changed = rerun_metrics(run, ["list1"])
    negated = read_scores(out / "list1" / "scores.txt")
    assert list(changed) == ["list1"]
    assert changed["list1"]["variants"]["raw"]["eer_percent"] == tt.compute_metrics(negated.scores,
                                                                                    negated.labels)["eer_percent"]
    assert changed["list1"]["variants"]["asnorm"] == saved["variants"]["asnorm"]
    assert (out / "list1_2" / "metrics.json").read_bytes() == first["list1_2/metrics.json"]
    with pytest.raises(ev.EvalError, match="has no list 'nolist'; its lists: list1, list1_2"):
        rerun_metrics(run, ["nolist"])

    # plot stage: det.png from metrics.json and the score files
    (out / "list1" / "scores.txt").write_bytes(first["list1/scores.txt"])
    rerun_metrics(run)
    (out / "list1" / "det.png").unlink()
    assert plot_list(out / "list1") == out / "list1" / "det.png"
    assert (out / "list1" / "det.png").read_bytes() == first["list1/det.png"]
    assert plot_stage(run, stages) == [out / "list1" / "det.png", out / "list1_2" / "det.png"]

    # embed stage: a deleted embeddings file is embedded again, to the same embeddings
    (out / "embeddings.npz").unlink()
    with caplog.at_level("INFO"):
        embedding.embed_stage(run, stages, embedder, embedding.weights_fingerprint(embedder.model.state_dict()),
                              normalize, show_progress=False)
    assert "embedded 7 test files" in caplog.text
    again = embedding.load_npz(out / "embeddings.npz")
    before = np.load(io.BytesIO(first["embeddings.npz"]))
    assert again[1]["names"].tolist() == before["names"].tolist()
    np.testing.assert_allclose(again[1]["embeddings"], before["embeddings"], rtol=1e-5, atol=1e-6)


# ---- mean subtraction and the durations of the embeddings file ---------------------------------------------------


def test_mean_subtraction_runs_the_cohort_stage_and_reruns_honestly(corpus, tmp_path, caplog):
    plain_cfg = make_cfg(corpus, tmp_path, eval_frames=0)
    sub_cfg = make_cfg(corpus, tmp_path, eval_frames=0, mean_subtraction=True, norm_cohort_utts=2)
    embedder, normalize = make_embedder(plain_cfg)
    folder = result(plain_cfg) / "list1"
    ev.evaluate(embedder, lists(plain_cfg), plain_cfg, result(plain_cfg), normalize, show_progress=False)
    plain = (folder / "scores.txt").read_text()
    assert json.loads((folder / "metrics.json").read_text())["variants"]["raw"]["mean_subtraction"] is False
    with pytest.raises(ev.EvalError, match="--mean_subtraction needs the cohort cache"):
        ev.score_from_cache(sub_cfg, lists(sub_cfg), result(sub_cfg))
    with caplog.at_level("INFO"):  # without --score_norm: the cohort stage runs for the training-set mean
        ev.evaluate(embedder, lists(sub_cfg), sub_cfg, result(sub_cfg), normalize, show_progress=False)
    assert "reusing the cached embeddings" in caplog.text and (result(sub_cfg) / "cohort.npz").is_file()
    subtracted = (folder / "scores.txt").read_text()
    assert subtracted != plain
    assert json.loads((folder / "metrics.json").read_text())["variants"]["raw"]["mean_subtraction"] is True
    ev.score_from_cache(plain_cfg, lists(plain_cfg), result(plain_cfg))
    assert (folder / "scores.txt").read_text() == plain
    ev.score_from_cache(sub_cfg, lists(sub_cfg), result(sub_cfg))
    assert (folder / "scores.txt").read_text() == subtracted

    meta, arrays = embedding.load_npz(result(plain_cfg) / "embeddings.npz")
    info = soundfile.info(str(Path(plain_cfg.test_path) / arrays["names"][0]))
    assert arrays["seconds"][0] == info.frames / info.samplerate and len(arrays["seconds"]) == meta["n_files"]


# ---- the walk from a trial list to metrics.json ------------------------------------------------------------------


def test_a_trial_list_reaches_metrics_json_through_each_stage_once_in_order(corpus, tmp_path):
    """The calls the pipeline makes into the stage modules, in order: each stage entered once (normalise twice: it
    owns both the cohort and the norm stage), none re-entered from another."""
    cfg = make_cfg(corpus, tmp_path, score_norm="asnorm", mean_subtraction=True, norm_cohort_utts=2,
                   calibration_list=str(corpus / "list1.txt"))
    embedder, normalize = make_embedder(cfg)
    stages = {f"dtdysv.evaluation.{name}" for name in ("embed", "normalise", "score", "calibrate", "metrics", "plot")}
    walk: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_back is not None \
                and frame.f_back.f_globals.get("__name__") == "dtdysv.evaluation.pipeline" \
                and frame.f_globals.get("__name__") in stages:
            walk.append(f"{frame.f_globals['__name__'].rpartition('.')[2]}.{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        ev.evaluate(embedder, lists(cfg), cfg, result(cfg), normalize, show_progress=False)
    finally:
        sys.setprofile(None)
    assert walk == ["calibrate.adopt_settings", "calibrate.read_calibration_list", "embed.embed_stage",
                    "normalise.cohort_stage",
                    "score.score_stage", "normalise.norm_stage", "calibrate.calibrate_stage",
                    "metrics.metrics_stage", "plot.plot_stage"]
    assert (result(cfg) / "list1" / "metrics.json").is_file() and (result(cfg) / "list1_2" / "metrics.json").is_file()
