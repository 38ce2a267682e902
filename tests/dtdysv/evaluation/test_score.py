"""Scoring protocols and score normalisation against direct, unvectorised references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtdysv.evaluation.normalise import cohort_statistics, norm_with_statistics
from dtdysv.evaluation.score import PROTOCOLS, score_trial_list
from tests.scoring_reference import as_norm, normalize_embeddings, s_norm, score_trials


def crops(n: int, c: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, d, generator=g, dtype=dtype)


def test_normalize_embeddings():
    x = crops(3, 4, 5, 0)
    y = normalize_embeddings(x, True)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(3, 4, dtype=x.dtype))
    torch.testing.assert_close(y * x.norm(dim=-1, keepdim=True), x)
    assert normalize_embeddings(x, False) is x


@pytest.mark.parametrize("normalize", [True, False])
def test_paper_score_is_minus_mean_crop_distance(normalize):
    enroll = normalize_embeddings(crops(6, 4, 16, 1), normalize)
    test = normalize_embeddings(crops(6, 4, 16, 2), normalize)
    got = score_trials(enroll, test, "paper")
    for n in range(6):
        # voxceleb_trainer: -mean(cdist(ref_feat, com_feat)); and the older pairwise_distance double loop
        expected = -torch.cdist(enroll[n], test[n]).mean()
        torch.testing.assert_close(got[n], expected, rtol=1e-10, atol=1e-10)
        loop = [F.pairwise_distance(enroll[n, i], test[n, j], eps=0.0) for i in range(4) for j in range(4)]
        torch.testing.assert_close(got[n], -torch.stack(loop).mean(), rtol=1e-10, atol=1e-10)


def test_paper_score_float32_and_identical_crops():
    enroll = normalize_embeddings(crops(5, 10, 64, 3, torch.float32), True)
    test = normalize_embeddings(crops(5, 10, 64, 4, torch.float32), True)
    expected = torch.stack([-torch.cdist(e.double(), t.double()).mean() for e, t in zip(enroll, test, strict=True)])
    torch.testing.assert_close(score_trials(enroll, test, "paper").double(), expected, rtol=1e-5, atol=1e-5)
    # identical crops: distance ~0 (a float32 |a|^2 + |b|^2 - 2ab leaves ~1e-7, i.e. ~3e-4 after the sqrt)
    same = score_trials(enroll[:, :1], enroll[:, :1], "paper")
    assert same.dtype == torch.float32 and torch.all(same.abs() < 1e-6)


def test_paper_score_different_crop_counts():
    enroll, test = crops(3, 2, 8, 5), crops(3, 5, 8, 6)
    expected = torch.stack([-torch.cdist(e, t).mean() for e, t in zip(enroll, test, strict=True)])
    torch.testing.assert_close(score_trials(enroll, test, "paper"), expected)


def test_cosine_score_of_crop_means():
    enroll, test = crops(7, 3, 12, 7), crops(7, 3, 12, 8)
    got = score_trials(enroll, test, "cosine")
    for n in range(7):
        expected = F.cosine_similarity(enroll[n].mean(0), test[n].mean(0), dim=0)
        torch.testing.assert_close(got[n], expected)
    # whole-utterance protocol: C = 1 is the plain cosine similarity
    torch.testing.assert_close(
        score_trials(enroll[:, :1], test[:, :1], "cosine"), F.cosine_similarity(enroll[:, 0], test[:, 0], dim=-1)
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_chunking_matches_one_batch(protocol):
    enroll, test = crops(37, 3, 8, 9, torch.float32), crops(37, 3, 8, 10, torch.float32)
    whole = score_trials(enroll, test, protocol, chunk_size=37)
    for chunk in (1, 5, 36, 100):
        assert torch.equal(score_trials(enroll, test, protocol, chunk_size=chunk), whole)


def test_unknown_protocol_lists_valid_ones():
    x = crops(2, 1, 4, 0)
    with pytest.raises(ValueError, match="'euclid'.*paper, cosine"):
        score_trials(x, x, "euclid")
    with pytest.raises(ValueError, match="paper, cosine"):
        score_trial_list({"a": x[0]}, [("a", "a")], "euclid")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, C, D\)"):
        score_trials(torch.zeros(2, 4), torch.zeros(2, 4), "paper")
    with pytest.raises(ValueError, match="must agree"):
        score_trials(torch.zeros(2, 1, 4), torch.zeros(3, 1, 4), "paper")


# ---- trial lists ------------------------------------------------------------------------------------------------


def make_table(n_files: int = 9, c: int = 3, d: int = 8) -> dict[str, torch.Tensor]:
    emb = normalize_embeddings(crops(n_files, c, d, 11, torch.float32), True)
    return {f"id{i:02d}/v/{i:05d}.wav": emb[i] for i in range(n_files)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_score_trial_list_gathers_by_name(protocol):
    table = make_table()
    names = list(table)
    rng = np.random.default_rng(0)
    pairs = [(names[i], names[j]) for i, j in rng.integers(0, len(names), size=(50, 2))]
    enroll = torch.stack([table[a] for a, _ in pairs])
    test = torch.stack([table[b] for _, b in pairs])
    expected = score_trials(enroll, test, protocol).double().numpy()
    for batch_size in (1, 7, 50, 1000):
        got = score_trial_list(table, pairs, protocol, batch_size=batch_size)
        assert got.dtype == np.float64 and got.shape == (50,)
        np.testing.assert_array_equal(got, expected)
    # (index, stacked) form, rows in another order
    order = names[::-1]
    index = {name: i for i, name in enumerate(order)}
    stacked = torch.stack([table[name] for name in order])
    np.testing.assert_array_equal(score_trial_list((index, stacked), pairs, protocol, batch_size=8), expected)


def test_score_trial_list_whole_utterance_vectors():
    table = {name: emb[0] for name, emb in make_table().items()}  # (D,) each
    pairs = [(a, b) for a in list(table)[:3] for b in list(table)[3:6]]
    expected = np.array([F.cosine_similarity(table[a], table[b], dim=0).item() for a, b in pairs])
    np.testing.assert_allclose(score_trial_list(table, pairs, "cosine"), expected, rtol=1e-6)


def test_score_trial_list_missing_file_is_named():
    table = make_table()
    names = list(table)
    with pytest.raises(ValueError, match=r"trial 1: test file 'id99/x/00001.wav' has no embedding"):
        score_trial_list(table, [(names[0], names[1]), (names[2], "id99/x/00001.wav")], "paper")
    with pytest.raises(ValueError, match="same number of crops"):
        score_trial_list({"a": torch.zeros(3, 4), "b": torch.zeros(2, 4)}, [("a", "b")], "paper")
    assert score_trial_list(table, [], "paper").shape == (0,)


# ---- score normalisation ----------------------------------------------------------------------------------------


def reference_as_norm(scores, enroll, test, cohort, top_n):
    """Per trial: cosine scores against every cohort vector one by one, sorted, top-N mean and std."""
    out = []
    for s, e, t in zip(scores.tolist(), enroll, test, strict=True):
        stats = []
        for x in (e, t):
            cos = sorted((F.cosine_similarity(x, c, dim=0).item() for c in cohort), reverse=True)[:top_n]
            stats.append((np.mean(cos), np.std(cos)))
        (me, se), (mt, st) = stats
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return np.array(out)


def trials_for_norm(n_files: int = 6, n_trials: int = 20, d: int = 8, m: int = 15):
    files = crops(n_files, 1, d, 20)[:, 0]
    cohort = crops(m, 1, d, 21)[:, 0]
    g = torch.Generator().manual_seed(22)
    e_idx = torch.randint(0, n_files, (n_trials,), generator=g)
    t_idx = torch.randint(0, n_files, (n_trials,), generator=g)
    scores = F.cosine_similarity(files[e_idx], files[t_idx], dim=-1)
    return files, cohort, e_idx, t_idx, scores


@pytest.mark.parametrize("top_n", [2, 5, 15])
def test_as_norm_matches_per_trial_reference(top_n):
    files, cohort, e_idx, t_idx, scores = trials_for_norm()
    expected = reference_as_norm(scores, files[e_idx], files[t_idx], cohort, top_n)
    # per-trial embeddings (deduplicated inside) and unique-file tables with indices give the same result
    got = as_norm(scores, files[e_idx], files[t_idx], cohort, top_n)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)
    got_idx = as_norm(scores.numpy(), files, files, cohort, top_n, e_idx, t_idx, chunk_size=4)
    torch.testing.assert_close(got_idx, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("top_n", [2, 5, 15])
def test_norm_with_statistics_of_each_file_matches_per_trial_reference(top_n):
    # the production path: cohort statistics once per file, then gathered for every trial
    files, cohort, e_idx, t_idx, scores = trials_for_norm()
    expected = reference_as_norm(scores, files[e_idx], files[t_idx], cohort, top_n)
    mean, std = cohort_statistics(files, cohort, top_n)
    got = norm_with_statistics(scores, mean, std, e_idx, t_idx)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)


def test_s_norm_uses_whole_cohort():
    files, cohort, e_idx, t_idx, scores = trials_for_norm()
    expected = reference_as_norm(scores, files[e_idx], files[t_idx], cohort, cohort.shape[0])
    got = s_norm(scores, files, files, cohort, e_idx, t_idx)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-10, atol=1e-10)
    # top-N differs from the whole cohort
    assert not torch.allclose(got, as_norm(scores, files, files, cohort, 3, e_idx, t_idx))


def test_cohort_statistics_chunked_and_shapes():
    files, cohort, *_ = trials_for_norm()
    mean, std = cohort_statistics(files, cohort, top_n=4, chunk_size=6)
    mean1, std1 = cohort_statistics(files, cohort, top_n=4, chunk_size=1)
    assert mean.shape == std.shape == (files.shape[0],)
    torch.testing.assert_close((mean, std), (mean1, std1))
    top = (F.normalize(files, dim=-1) @ F.normalize(cohort, dim=-1).T).sort(dim=1, descending=True).values[:, :4]
    torch.testing.assert_close(mean, top.mean(1))
    with pytest.raises(ValueError, match="top_n"):
        cohort_statistics(files, cohort, top_n=1)
    with pytest.raises(ValueError, match="top_n"):
        cohort_statistics(files, cohort, top_n=cohort.shape[0] + 1)
    with pytest.raises(ValueError, match="enroll_index"):
        as_norm(torch.zeros(3), files, files, cohort, 2, torch.tensor([0, 1, 99]), torch.tensor([0, 1, 2]))
