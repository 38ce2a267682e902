"""Training equals the official computation: with identical weights, a training-mode forward (BatchNorm batch
statistics), the ``softmaxproto`` loss, every parameter's gradient, the running statistics and one Adam step of
our DTDY-ResNet-34 equal those of the straightforward official formulation (tests/reference_dtdy.py with the
official loss written out below), to 1e-4 relative.

The comparison runs the embedding networks in float64 (the loss heads in float32, as training runs them): in
float32 a randomly initialised 34-layer network with batch statistics of 8 crops amplifies rounding, and the two
formulations' gradients then differ by a few percent in both directions, which says nothing about the
formulation. In float64 they agree to about 1e-6 (the float32 heads' rounding). Adam is compared from the same
gradients (it divides every element by its own magnitude, which would magnify that rounding in tiny elements).

Also: one full training step under ``--mixedprec`` (bf16 autocast on CPU) stays within the tolerance stated in
its test of the fp32 step.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config import Config
from dtdysv.runtime import plugins
from loss.softmaxproto import LossFunction as SoftmaxProto
from models._official import convert_official_checkpoint, map_official_key
from models._resnet import RESNET34_DEPTHS, WIDTHS_HALF, WIDTHS_QUARTER
from SpeakerNet import ModelTrainer, SpeakerNet
from tests.reference_dtdy import ReferenceResNet

SPEAKERS, PER_SPEAKER, SAMPLES, CLASSES = 4, 2, 6_000, 10
LR, WEIGHT_DECAY = 1e-3, 5e-5
RTOL = 1e-4


class OfficialSoftmaxProto(nn.Module):
    """voxceleb_trainer's softmaxproto as the official code computes it: softmax over every crop plus the angular
    prototypical loss of the first crop against the mean of the others."""

    def __init__(self, n_out: int, n_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_out, n_classes)
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-5.0))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x (B, 2, nOut), label (B,) -> loss."""
        loss_s = F.cross_entropy(self.fc(x.reshape(-1, x.shape[-1])), label.repeat_interleave(x.shape[1]))
        positive, anchor = x[:, 0, :], x[:, 1:, :].mean(dim=1)
        cos = F.cosine_similarity(positive.unsqueeze(-1), anchor.unsqueeze(-1).transpose(0, 2))  # (B, B)
        return loss_s + F.cross_entropy(cos * self.w + self.b, torch.arange(x.shape[0]))


def official_step(ref: nn.Module, head: nn.Module, data: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The official training step's loss: crops of all speakers through the encoder, (B, N, nOut) to the head."""
    batch, per_speaker, samples = data.shape
    emb = ref(data.transpose(0, 1).reshape(-1, samples))  # (N * B, nOut), crop n of every speaker together
    emb = emb.reshape(per_speaker, batch, -1).transpose(0, 1)  # (B, N, nOut)
    return head(emb.float(), label)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach(), theirs.detach()
    return float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max())


@pytest.mark.parametrize("plugin, widths, encoder_type", [("DTDY_ResNet34_half", WIDTHS_HALF, "ASP"),
                                                          ("DTDY_ResNet34_quarter", WIDTHS_QUARTER, "SAP")])
@pytest.mark.slow
def test_training_step_equals_the_official_computation(plugin, widths, encoder_type):
    torch.manual_seed(0)
    ref = ReferenceResNet(widths, RESNET34_DEPTHS, nOut=512, encoder_type=encoder_type, n_mels=64).double()
    for m in ref.modules():  # BatchNorm affine away from its initial values, so that mistakes in it show
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.1)
    cfg = Config(model=plugin, encoder_type=encoder_type, n_mels=64, nOut=512, nClasses=CLASSES, lr=LR,
                 weight_decay=WEIGHT_DECAY)
    model = plugins.build("model", plugin, cfg).double()
    official = {"model_state_dict": {"__S__." + k: v for k, v in ref.state_dict().items()}}
    model.load_state_dict(convert_official_checkpoint(official, model.state_dict())[0])
    head = SoftmaxProto(nOut=512, nClasses=CLASSES)
    ref_head = OfficialSoftmaxProto(512, CLASSES)
    ref_head.load_state_dict({"fc.weight": head.softmax.fc.weight, "fc.bias": head.softmax.fc.bias,
                              "w": head.angleproto.w, "b": head.angleproto.b})
    net = SpeakerNet(model, head).train()
    ref.train()
    optimizer = plugins.build("optimizer", "adam", cfg, named_parameters=list(net.named_parameters()))
    ref_optimizer = torch.optim.Adam([*ref.parameters(), *ref_head.parameters()], lr=LR, weight_decay=WEIGHT_DECAY)

    data = torch.randn(SPEAKERS, PER_SPEAKER, SAMPLES, dtype=torch.float64)
    label = torch.arange(SPEAKERS)
    loss, _ = net(data, label)
    ref_loss = official_step(ref, ref_head, data, label)
    assert abs(loss.item() - ref_loss.item()) <= RTOL * abs(ref_loss.item())
    loss.backward()
    ref_loss.backward()

    ours = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    scale = max(float(p.grad.abs().max()) for p in ref.parameters())
    pairs = []  # (official name, our tensor, the official tensor in our layout)
    for name, param in ref.named_parameters():
        our_name, transform = map_official_key(name)
        grad = transform(param.grad)
        if float(grad.abs().max()) < 1e-12 * scale:
            # a bias followed by a training-mode BatchNorm or a softmax over time: its gradient vanishes in theory
            assert float(ours[our_name].grad.abs().max()) < 1e-9 * scale, name
        else:
            assert relative_error(ours[our_name].grad, grad) <= RTOL, f"gradient of {name}"
        pairs.append((name, ours[our_name], transform(param.detach())))
    for name, buffer in ref.named_buffers():
        our_name, transform = map_official_key(name)
        if "running" in name:  # the batch statistics of the forward
            assert relative_error(buffers[our_name], transform(buffer)) <= RTOL, name
    head_pairs = [(head.softmax.fc.weight, ref_head.fc.weight), (head.softmax.fc.bias, ref_head.fc.bias),
                  (head.angleproto.w, ref_head.w), (head.angleproto.b, ref_head.b)]
    for our_param, ref_param in head_pairs[:3]:
        assert relative_error(our_param.grad, ref_param.grad) <= RTOL
    assert abs(float(head.angleproto.b.grad)) < 1e-6  # a bias under a softmax: no gradient in theory

    # One Adam step from the same gradients: Adam divides every element by its own magnitude, so elements whose
    # gradient is ~1e-6 of their tensor's largest would turn the rounding above into visible differences.
    with torch.no_grad():
        for name, param in ref.named_parameters():
            our_name, transform = map_official_key(name)
            ours[our_name].grad.copy_(transform(param.grad))
        for our_param, ref_param in head_pairs:
            our_param.grad.copy_(ref_param.grad)
    before = {name: ours_param.detach().clone() for name, ours_param, _ in pairs}
    optimizer.step()
    ref_optimizer.step()
    for name, param in ref.named_parameters():
        our_name, transform = map_official_key(name)
        step = ours[our_name].detach() - before[name]
        ref_step = transform(param.detach()) - before[name]
        assert float(step.abs().max()) > 0.5 * LR, name  # Adam's first step moves every weight by about lr
        assert relative_error(step, ref_step) <= RTOL, f"Adam step of {name}"
    for our_param, ref_param in head_pairs:
        assert relative_error(our_param, ref_param) <= RTOL


def _one_training_step(mixedprec: bool) -> tuple[float, torch.Tensor, SpeakerNet]:
    """One step of ModelTrainer (autocast bf16 on CPU with --mixedprec) of DTDY x0.25 from a fixed initialisation:
    (loss, the step's gradient as one vector, the net)."""
    cfg = Config(model="DTDY_ResNet34_quarter", encoder_type="SAP", n_mels=40, nOut=128, nClasses=8, lr=LR)
    torch.manual_seed(1)
    net = SpeakerNet(plugins.build("model", cfg.model, cfg), plugins.build("loss", "softmaxproto", cfg))
    optimizer = plugins.build("optimizer", "adam", cfg, named_parameters=list(net.named_parameters()))
    scheduler, step_per = plugins.build("scheduler", "steplr", cfg, optimizer=optimizer, iters_per_epoch=1)
    trainer = ModelTrainer(net, optimizer, scheduler, step_per, torch.device("cpu"), mixedprec, "bf16")
    data = 0.1 * torch.randn(8, 2, 8_000, generator=torch.Generator().manual_seed(2))
    stats = trainer.train_network([(data, torch.arange(8))], epoch=1, steps=1, show_progress=False)
    return stats["loss"], torch.cat([p.grad.flatten() for p in net.parameters()]), net


@pytest.mark.slow
def test_a_bf16_training_step_stays_close_to_fp32():
    """--mixedprec on CPU (bf16 autocast): the loss within 1% of fp32's, the gradient pointing the same way.

    At initialisation bf16's rounding (8-bit mantissa) moves a 34-layer network's gradient noticeably: the cosine
    between the bf16 and fp32 gradients is about 0.73 for DTDY x0.25 and 0.80 for its static twin in this setting,
    so 0.6 is the bound; a broken cast or a path left in bf16 that should not be gives about 0 or non-finite values.
    """
    loss32, grad32, _ = _one_training_step(mixedprec=False)
    loss16, grad16, net = _one_training_step(mixedprec=True)
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    assert torch.isfinite(grad16).all()
    assert float(F.cosine_similarity(grad16, grad32, dim=0)) > 0.6
    assert all(p.dtype == torch.float32 for p in net.parameters())  # weights and optimizer stay fp32
