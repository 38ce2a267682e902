"""Every loss plugin: contract, accuracy/loss on separable and confusable embeddings, learning, finite gradients,
agreement with hand-computed values and independent loop implementations, the scale clamp, fp32 under autocast,
and the margin schedule."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import config
import loss as loss_package
from loss._margin import additive_angular_margin
from scheduler._margin import margin_at

LOSSES = sorted(m.name for m in pkgutil.iter_modules(loss_package.__path__) if not m.name.startswith("_"))
REQUIRED = {"softmax", "amsoftmax", "aamsoftmax", "aamsoftmax_subcenter", "angleproto", "softmaxproto", "ge2e",
            "proto", "triplet", "amsoftmaxproto"}

N_OUT, N_CLASSES, SUBCENTERS = 16, 6, 3
OPTIONS = {"nOut": N_OUT, "nClasses": N_CLASSES, "margin": 0.2, "scale": 30.0, "hard_rank": 2, "hard_prob": 0.5,
           "subcenters": SUBCENTERS}
LABELS = torch.tensor([3, 0, 5, 1, 4, 2])  # B = 6 distinct speakers, not in row order


pytestmark = pytest.mark.usefixtures("one_thread")


def loss_class(name: str) -> type[nn.Module]:
    return importlib.import_module(f"loss.{name}").LossFunction


def make(name: str, **overrides: float) -> nn.Module:
    torch.manual_seed(0)
    params = inspect.signature(loss_class(name)).parameters
    return loss_class(name)(**{p: overrides.get(p, OPTIONS[p]) for p in params})


def set_class_directions(module: nn.Module) -> None:
    """Point every classifier weight of class c (and every sub-centre of it) along the unit vector e_c."""
    eye = torch.eye(N_OUT)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 2 and p.shape == (N_OUT, N_CLASSES):  # amsoftmax's W (nOut, nClasses)
                p.copy_(eye[:, :N_CLASSES])
            elif p.dim() == 2 and p.size(1) == N_OUT and p.size(0) % N_CLASSES == 0:  # (nClasses * K, nOut)
                p.copy_(eye[:N_CLASSES].repeat_interleave(p.size(0) // N_CLASSES, dim=0))
            elif p.dim() == 1 and p.numel() == N_CLASSES:  # classifier bias
                p.zero_()
            elif p.dim() != 0:
                raise AssertionError(f"test does not know how to set {name} {tuple(p.shape)}")


def embeddings(shift: int, per_speaker: int = 3, norm: float = 10.0) -> torch.Tensor:
    """(6, per_speaker, nOut): utterance n of row b points along e_{label[(b + shift * n) % 6]}."""
    rows = torch.arange(6)[:, None] + shift * torch.arange(per_speaker)[None, :]  # (6, N)
    return norm * torch.eye(N_OUT)[LABELS[rows % 6]]


def test_every_required_loss_is_discovered() -> None:
    assert REQUIRED <= set(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_contract(name: str) -> None:
    cls = loss_class(name)
    assert isinstance(cls.test_normalize, bool)
    assert isinstance(cls.min_per_speaker, int) and cls.min_per_speaker >= 1
    config_keys = {f.name for f in dataclasses.fields(config.Config)}
    for p in inspect.signature(cls).parameters.values():
        assert p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL), f"{name} takes *args/**kwargs"
        assert p.name in config_keys, f"{name} parameter {p.name} is not a config option"
        assert p.default == getattr(config.DEFAULTS, p.name), f"{name}: {p.name}'s default is not the config's"
    module = make(name)
    x = torch.randn(6, max(2, cls.min_per_speaker), N_OUT)
    value, prec1 = module(x, LABELS)
    assert value.dim() == 0 and prec1.dim() == 0 and not prec1.requires_grad
    assert 0.0 <= prec1.item() <= 100.0
    if cls.min_per_speaker > 1:
        with pytest.raises(ValueError, match="nPerSpeaker"):
            module(torch.randn(6, cls.min_per_speaker - 1, N_OUT), LABELS)
    with pytest.raises(ValueError, match="shape"):
        module(torch.randn(6, N_OUT), LABELS)
    with pytest.raises(ValueError, match="labels"):
        module(x, LABELS[:3])


@pytest.mark.parametrize("name", LOSSES)
def test_separable_is_perfect_and_confusable_is_not(name: str) -> None:
    module = make(name)
    set_class_directions(module)
    loss_sep, acc_sep = module(embeddings(shift=0), LABELS)
    assert acc_sep.item() == 100.0
    assert 0.0 <= loss_sep.item() < 1e-3, "separable embeddings should give (nearly) the minimum loss, 0"
    loss_conf, acc_conf = module(embeddings(shift=1), LABELS)
    assert acc_conf.item() < 50.0
    assert loss_conf.item() > 0.1


@pytest.mark.parametrize("name", LOSSES)
def test_loss_decreases_on_a_small_learnable_problem(name: str) -> None:
    torch.manual_seed(0)
    means = torch.cat([2.0 * torch.randn(6, 4), torch.zeros(6, 4)], dim=1)  # speaker b's centre, (6, 8)
    nuisance = torch.tensor([0.3] * 4 + [3.0] * 4)  # noise scale: the last 4 inputs must be learnt away
    embedder = nn.Linear(8, N_OUT)
    module = make(name)
    optimizer = torch.optim.Adam([*embedder.parameters(), *module.parameters()], lr=0.02)
    losses = []
    for _ in range(40):
        x = embedder(means[:, None, :] + nuisance * torch.randn(6, 3, 8))  # (6, 3, nOut)
        value, _ = module(x, LABELS)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 0.05 and last < 0.5 * first, f"{name}: loss went from {first:.4f} to {last:.4f}"


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("case", ["random", "separable", "confusable", "zero"])
def test_gradients_are_finite(name: str, case: str) -> None:
    module = make(name)
    if case == "random":
        x = torch.randn(6, 3, N_OUT)
    else:
        set_class_directions(module)  # cosines of exactly +-1 and 0: the AAM sqrt must not blow up
        x = embeddings(shift=0 if case == "separable" else 1)
        if case == "zero":
            x[0, 0] = 0.0
    x.requires_grad_(True)
    value, _ = module(x, LABELS)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", LOSSES)
def test_runs_in_fp32_under_autocast(name: str) -> None:
    module = make(name)
    x = 3.0 * torch.randn(6, 3, N_OUT)
    torch.manual_seed(1)
    reference, _ = module(x, LABELS)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, _ = module(x, LABELS)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


def test_proto_uses_the_full_distance_matrix() -> None:
    # 3 speakers in 2-D. First utterances p_b; prototypes a_b = mean of utterances 1 and 2 (a_b +- v).
    p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    a = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 2.0]])
    v = torch.tensor([0.5, -0.5])
    x = torch.stack([p, a + v, a - v], dim=1)  # (3, 3, 2)
    # Squared distances |p_i - a_j|^2 by hand: rows [1, 2, 5], [2, 1, 4], [4, 5, 2].
    expected = (1 + math.log(math.exp(-1) + math.exp(-2) + math.exp(-5))
                + 1 + math.log(math.exp(-2) + math.exp(-1) + math.exp(-4))
                + 2 + math.log(math.exp(-4) + math.exp(-5) + math.exp(-2))) / 3
    value, prec1 = loss_class("proto")()(x, torch.tensor([0, 1, 2]))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert prec1.item() == 100.0
    # p_2 moved next to a_0: its nearest prototype becomes speaker 0, so 2 of 3 are right.
    x[2, 0] = torch.tensor([0.0, 1.2])
    assert loss_class("proto")()(x, torch.tensor([0, 1, 2]))[1].item() == pytest.approx(200 / 3)


def unit(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def test_triplet_uses_the_full_distance_matrix_for_hardest_negatives() -> None:
    # Anchors at 0, 120, 240 degrees; positives at 10, 100, 250 degrees (unit vectors: d^2 = 2 - 2 cos(angle)).
    # Hardest negative (closest other positive): anchor 0 -> positive 1 (100 deg apart), anchor 1 -> positive 0
    # (110), anchor 2 -> positive 0 (130). Anchor-positive angles: 10, 20, 10.
    x = torch.stack([torch.stack([unit(0), unit(10)]), torch.stack([unit(120), unit(100)]),
                     torch.stack([unit(240), unit(250)])])  # (3, 2, 2)
    margin = 3.5

    def d2(deg: float) -> float:
        return 2 - 2 * math.cos(math.radians(deg))

    expected = sum(max(0.0, d2(ap) - d2(an) + margin) for ap, an in [(10, 100), (20, 110), (10, 130)]) / 3
    module = loss_class("triplet")(margin=margin, hard_rank=0, hard_prob=1.0)
    value, prec1 = module(5.0 * x, torch.tensor([0, 1, 2]))  # norms do not matter: embeddings are normalised
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert prec1.item() == 100.0


def test_triplet_mining_modes() -> None:
    torch.manual_seed(0)
    dist2 = torch.tensor([[0.10, 0.30, 0.15, 2.00],
                          [0.50, 0.20, 0.25, 0.90],
                          [0.40, 0.60, 0.05, 0.70],
                          [1.00, 0.35, 0.80, 0.30]])
    hardest = loss_class("triplet")(margin=0.1, hard_rank=0, hard_prob=1.0)
    assert hardest.mine_negatives(dist2).tolist() == [2, 2, 0, 1]
    top2 = loss_class("triplet")(margin=0.1, hard_rank=1, hard_prob=1.0)
    picks = torch.stack([top2.mine_negatives(dist2) for _ in range(200)])  # (200, 4)
    for row, allowed in enumerate([{2, 1}, {2, 0}, {0, 1}, {1, 2}]):
        assert set(picks[:, row].tolist()) == allowed
    anyone = loss_class("triplet")(margin=0.1, hard_rank=0, hard_prob=0.0)
    picks = torch.stack([anyone.mine_negatives(dist2) for _ in range(200)])
    for row in range(4):
        assert set(picks[:, row].tolist()) == set(range(4)) - {row}
    # Semi-hard: d_ap^2 < d_an^2 < d_ap^2 + 0.1. Row 0: only column 2 (0.15); row 1: only column 2 (0.25);
    # row 2: none in (0.05, 0.15), so any negative; row 3: only column 1 (0.35).
    semi = loss_class("triplet")(margin=0.1, hard_rank=-1, hard_prob=0.5)
    picks = torch.stack([semi.mine_negatives(dist2) for _ in range(200)])
    assert set(picks[:, 0].tolist()) == {2} and set(picks[:, 1].tolist()) == {2}
    assert set(picks[:, 3].tolist()) == {1} and set(picks[:, 2].tolist()) == {0, 1, 3}


def ge2e_reference(x: torch.Tensor, w: float, b: float) -> torch.Tensor:
    """The GE2E softmax loss written out with loops (Wan et al. 2018, eq. 6-9)."""
    batch, per_speaker, _ = x.shape
    rows, targets = [], []
    for j in range(batch):
        for i in range(per_speaker):
            logits = []
            for k in range(batch):
                members = [x[k, m] for m in range(per_speaker) if not (k == j and m == i)]
                centroid = torch.stack(members).mean(dim=0)
                logits.append(w * F.cosine_similarity(x[j, i], centroid, dim=0) + b)
            rows.append(torch.stack(logits))
            targets.append(j)
    return F.cross_entropy(torch.stack(rows), torch.tensor(targets))


def angleproto_reference(x: torch.Tensor, w: float, b: float) -> torch.Tensor:
    batch = x.size(0)
    logits = torch.tensor([[w * F.cosine_similarity(x[i, 0], x[j, 1:].mean(dim=0), dim=0).item() + b
                            for j in range(batch)] for i in range(batch)])
    return F.cross_entropy(logits, torch.arange(batch))


@pytest.mark.parametrize("per_speaker", [2, 3])
def test_ge2e_and_angleproto_match_loop_implementations(per_speaker: int) -> None:
    torch.manual_seed(3)
    x = torch.randn(5, per_speaker, 7)
    for name, reference in (("ge2e", ge2e_reference), ("angleproto", angleproto_reference)):
        module = loss_class(name)()
        with torch.no_grad():
            module.w.fill_(7.0)
            module.b.fill_(-2.0)
        value, _ = module(x, torch.arange(5))
        assert value.item() == pytest.approx(reference(x, 7.0, -2.0).item(), rel=1e-5), name


def test_aam_matches_arc_cosine_formula() -> None:
    torch.manual_seed(4)
    margin, scale = 0.3, 20.0
    cosine = torch.rand(8, 5) * 1.8 - 0.9
    label = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    cosine[7, 2] = -0.99  # theta + m > pi: the monotonic fallback cos - m sin(m)
    logits = additive_angular_margin(cosine, label, margin, scale)
    for n in range(8):
        for c in range(5):
            cos = cosine[n, c].item()
            if c != label[n].item():
                expected = scale * cos
            elif math.acos(cos) + margin < math.pi:
                expected = scale * math.cos(math.acos(cos) + margin)
            else:
                expected = scale * (cos - margin * math.sin(margin))
            assert logits[n, c].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_margin_losses_match_their_formulas() -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 2, N_OUT)
    emb, target = x.reshape(12, N_OUT), LABELS.repeat_interleave(2)
    aam = make("aamsoftmax", margin=0.25, scale=20.0)
    cos = F.normalize(emb) @ F.normalize(aam.weight).t()
    theta = torch.acos(cos.gather(1, target[:, None]))
    logits = 20.0 * cos.scatter(1, target[:, None], torch.cos(theta + 0.25))
    assert aam(x, LABELS)[0].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    am = make("amsoftmax", margin=0.25, scale=20.0)
    cos = F.normalize(emb) @ F.normalize(am.W, dim=0)
    logits = 20.0 * (cos - 0.25 * F.one_hot(target, N_CLASSES))
    assert am(x, LABELS)[0].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    # The trainer's margin schedule writes .margin: with margin 0 both are plain scaled-cosine softmax.
    for module, weight in ((aam, F.normalize(aam.weight)), (am, F.normalize(am.W, dim=0).t())):
        module.margin = 0.0
        plain = F.cross_entropy(20.0 * F.normalize(emb) @ weight.t(), target)
        assert module(x, LABELS)[0].item() == pytest.approx(plain.item(), rel=1e-5)


def test_subcenter_aam_takes_the_best_of_k_centres() -> None:
    torch.manual_seed(6)
    module = make("aamsoftmax_subcenter", margin=0.2, scale=30.0)
    emb = torch.randn(10, N_OUT)
    weight = F.normalize(module.weight.detach())  # row c * K + k is centre k of class c
    expected = torch.tensor([[max(float(emb[n] @ weight[c * SUBCENTERS + k] / emb[n].norm())
                                  for k in range(SUBCENTERS)) for c in range(N_CLASSES)] for n in range(10)])
    assert torch.allclose(module.class_cosine(emb), expected, atol=1e-6)
    # With one dominant centre per class the loss equals plain AAM-softmax on those centres, and the other
    # centres get no gradient.
    x = embeddings(shift=1, per_speaker=2) + 0.5 * torch.rand(6, 2, N_OUT)  # positive: e_c beats -e_c
    best = torch.eye(N_OUT)[:N_CLASSES]  # class c -> e_c
    with torch.no_grad():
        module.weight.copy_(-best.repeat_interleave(SUBCENTERS, dim=0))  # every centre at -e_c ...
        module.weight[1::SUBCENTERS] = best  # ... except centre 1 at e_c
    aam = make("aamsoftmax", margin=0.2, scale=30.0)
    with torch.no_grad():
        aam.weight.copy_(best)
    value, prec1 = module(x, LABELS)
    reference, reference_prec1 = aam(x, LABELS)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    assert prec1.item() == reference_prec1.item()
    value.backward()
    grad = module.weight.grad.reshape(N_CLASSES, SUBCENTERS, N_OUT)
    assert grad[:, 1].abs().sum() > 0
    assert grad[:, 0].abs().sum() == 0 and grad[:, 2].abs().sum() == 0


SCALED = [n for n in LOSSES if any(pname.split(".")[-1] == "w" for pname, _ in make(n).named_parameters())]


def test_scaled_losses_found() -> None:
    assert {"angleproto", "ge2e", "softmaxproto", "amsoftmaxproto"} <= set(SCALED)


@pytest.mark.parametrize("name", SCALED)
def test_learnable_scale_is_really_clamped(name: str) -> None:
    x = torch.randn(6, 2, N_OUT)
    module = make(name)
    w = next(p for pname, p in module.named_parameters() if pname.split(".")[-1] == "w")
    with torch.no_grad():
        w.fill_(1e-6)
    clamped, _ = module(x, LABELS)
    with torch.no_grad():
        w.fill_(-3.0)
    value, _ = module(x, LABELS)
    assert w.item() == pytest.approx(1e-6)
    assert value.item() == pytest.approx(clamped.item(), rel=1e-6)
    if name in ("angleproto", "ge2e"):  # all logits ~ b: chance level over the 6 speakers
        assert value.item() == pytest.approx(math.log(6), abs=1e-4)
    # The clamp must not invalidate a graph built by an earlier forward (e.g. two forwards, then backward).
    first, _ = module(x.requires_grad_(True), LABELS)
    second, _ = module(x, LABELS)
    (first + second).backward()
    assert torch.isfinite(w.grad)


def test_voxceleb_trainer_parameter_names_and_inits() -> None:
    shapes = {n: {k: tuple(v.shape) for k, v in make(n).state_dict().items()} for n in LOSSES}
    assert shapes["softmax"] == {"fc.weight": (N_CLASSES, N_OUT), "fc.bias": (N_CLASSES,)}
    assert shapes["amsoftmax"] == {"W": (N_OUT, N_CLASSES)}
    assert shapes["aamsoftmax"] == {"weight": (N_CLASSES, N_OUT)}
    assert shapes["aamsoftmax_subcenter"] == {"weight": (N_CLASSES * SUBCENTERS, N_OUT)}
    assert shapes["softmaxproto"] == {"softmax.fc.weight": (N_CLASSES, N_OUT), "softmax.fc.bias": (N_CLASSES,),
                                      "angleproto.w": (), "angleproto.b": ()}
    assert shapes["amsoftmaxproto"] == {"amsoftmax.W": (N_OUT, N_CLASSES), "angleproto.w": (), "angleproto.b": ()}
    for name in ("angleproto", "ge2e"):
        assert shapes[name] == {"w": (), "b": ()}
        assert make(name).w.item() == 10.0 and make(name).b.item() == -5.0
    assert loss_class("proto").test_normalize is False and loss_class("softmaxproto").test_normalize is True


@pytest.mark.parametrize("name,head", [("softmaxproto", "softmax"), ("amsoftmaxproto", "amsoftmax")])
def test_combined_losses_are_the_equal_weight_sum(name: str, head: str) -> None:
    torch.manual_seed(7)
    x = torch.randn(6, 2, N_OUT)
    module = make(name)
    classifier, proto = make(head), make("angleproto")
    classifier.load_state_dict(getattr(module, head).state_dict())
    value, prec1 = module(x, LABELS)
    expected = classifier(x, LABELS)[0] + proto(x, LABELS)[0]
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert prec1.item() == classifier(x, LABELS)[1].item()


MARGINED = [n for n in LOSSES if hasattr(make(n), "margin")]


def test_margin_losses_found() -> None:
    assert {"amsoftmax", "aamsoftmax", "aamsoftmax_subcenter", "amsoftmaxproto", "triplet"} <= set(MARGINED)


@pytest.mark.parametrize("name", MARGINED)
def test_margin_attribute_drives_the_loss(name: str) -> None:
    x = torch.randn(6, 2, N_OUT)
    module = make(name)
    values = []
    for margin in (0.0, 0.3):
        module.margin = margin
        assert module.margin == margin
        torch.manual_seed(8)  # same negatives for triplet
        values.append(module(x, LABELS)[0].item())
    assert values[1] > values[0]


def test_margin_schedule() -> None:
    assert margin_at(0.0, 0.2, 0, 0) == 0.2 and margin_at(7.5, 0.2, 0, 0) == 0.2  # 0/0: no schedule
    assert margin_at(0.0, 0.2, 10, 20) == 0.0 and margin_at(10.0, 0.2, 10, 20) == 0.0
    assert margin_at(20.0, 0.2, 10, 20) == 0.2 and margin_at(35.0, 0.2, 10, 20) == 0.2
    # 0.2 * (1 - 1e-3 ** p) / (1 - 1e-3): p = 0.5 -> 0.2 * 0.9683772 / 0.999; p = 0.1 -> 0.2 * 0.4988128 / 0.999
    assert margin_at(15.0, 0.2, 10, 20) == pytest.approx(0.1938693, abs=1e-6)
    assert margin_at(11.0, 0.2, 10, 20) == pytest.approx(0.0998624, abs=1e-6)
    grid = [margin_at(e / 10, 0.2, 0, 5) for e in range(60)]
    assert all(b >= a for a, b in zip(grid, grid[1:], strict=False))
    assert margin_at(4.99999, 0.2, 0, 5) == pytest.approx(0.2, abs=1e-5)  # continuous at the end
    assert margin_at(2.9, 0.3, 3, 3) == 0.0 and margin_at(3.0, 0.3, 3, 3) == 0.3  # start = end: a step
    for start, end in ((5, 2), (-1, 3)):
        with pytest.raises(ValueError, match="margin_rampup"):
            margin_at(1.0, 0.2, start, end)
