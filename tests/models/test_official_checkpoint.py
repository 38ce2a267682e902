"""Conversion of checkpoints written by the official DTDY-CNN code (models/_official.py)."""


import pytest
import torch

from conftest import ROOT
from models._frontend import make_mel_spectrogram
from models._official import convert_official_checkpoint, is_official_checkpoint, map_official_key
from models._resnet import RESNET34_DEPTHS, WIDTHS_HALF
from models.DTDY_ResNet34_half import MainModel as DTDYHalf
from tests.reference_dtdy import ReferenceResNet

KEY_LIST_NAME = "official_DTDY_ResNet34_half_ASP_n_mels64_nOut512.state_dict.txt"
KEY_LIST_PLACES = [
                   ROOT.parent / "shared" / "reference" / KEY_LIST_NAME]
LOSS_HEAD = {"__L__.softmax.fc.weight": (5994, 512), "__L__.softmax.fc.bias": (5994,),
             "__L__.angleproto.w": (1,), "__L__.angleproto.b": (1,)}


def official_key_list() -> dict[str, tuple[int, ...]]:
    """name -> shape from the published key list of the official encoder."""
    path = next((p for p in KEY_LIST_PLACES if p.exists()), None)
    if path is None:
        pytest.skip(f"{KEY_LIST_NAME} not found in {[str(p.parent) for p in KEY_LIST_PLACES]}")
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split()
            shapes[name] = () if shape == "scalar" else tuple(int(n) for n in shape.split("x"))
    return shapes


FRONTEND_LAYOUTS = ["torchfb.0.", "torchfb.", None]  # the official Sequential, other forks, no buffers


def random_official_checkpoint(shapes: dict[str, tuple[int, ...]], frontend: str | None = "torchfb.0.",
                               n_mels: int = 64) -> dict:
    """An official training checkpoint with random weights; the front-end buffers (under the prefix ``frontend``,
    or none) are those of a real ``n_mels`` front-end, as a trained checkpoint carries them."""
    gen = torch.Generator().manual_seed(0)
    buffers = make_mel_spectrogram(n_mels).state_dict()  # spectrogram.window, mel_scale.fb
    state = {}
    for name, shape in shapes.items():
        if name.startswith("torchfb."):
            if frontend is not None:
                rest = name[len("torchfb.0."):]
                state["__S__." + frontend + rest] = buffers[rest].clone()
            continue
        if name.endswith("num_batches_tracked"):
            state["__S__." + name] = torch.tensor(123)
        elif name.endswith("running_var"):  # a variance is positive
            state["__S__." + name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state["__S__." + name] = torch.randn(shape, generator=gen)
    state.update({k: torch.randn(s, generator=gen) for k, s in LOSS_HEAD.items()})
    return {"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}


def half_asp() -> torch.nn.Module:
    return DTDYHalf(nOut=512, encoder_type="ASP", n_mels=64, log_input=True)


def test_the_reference_model_has_the_official_names_and_shapes():
    official = official_key_list()
    ref = ReferenceResNet(WIDTHS_HALF, RESNET34_DEPTHS, nOut=512, encoder_type="ASP", n_mels=64)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == official


def test_the_key_list_has_the_official_front_end_buffers():
    official = official_key_list()
    assert official["torchfb.0.spectrogram.window"] == (400,)
    assert official["torchfb.0.mel_scale.fb"] == (257, 64)


@pytest.mark.parametrize("frontend", FRONTEND_LAYOUTS)
def test_key_list_checkpoint_converts_and_loads_strictly(frontend):
    official = official_key_list()
    ckpt = random_official_checkpoint(official, frontend)
    assert is_official_checkpoint(ckpt)
    model = half_asp()
    state, loss = convert_official_checkpoint(ckpt, model.state_dict())
    model.load_state_dict(state, strict=True)
    assert {k: tuple(v.shape) for k, v in loss.items()} == {k[len("__L__."):]: s for k, s in LOSS_HEAD.items()}
    src = ckpt["model_state_dict"]
    assert torch.equal(model.layer2[0].conv1.w0,
                       src["__S__.layer2.0.conv1.conv.weight"].transpose(2, 3))
    assert torch.equal(model.layer4[0].downsample[0].p, src["__S__.layer4.0.downsample.0.p.weight"][:, :, 0, 0])
    assert torch.equal(model.layer1[2].conv2.phi.gate.weight,
                       src["__S__.layer1.2.conv2.fc_phi.semodule.fc.0.weight"])
    assert torch.equal(model.pooling.attention[1].running_var, src["__S__.attention.1.running_var"])
    assert int(model.layer3[1].conv1.bn_mix.num_batches_tracked) == 123
    assert torch.equal(model.torchfb.spectrogram.window, torch.hamming_window(400))
    assert torch.equal(model.torchfb.mel_scale.fb, make_mel_spectrogram(64).mel_scale.fb)


def test_front_end_of_another_n_mels_names_the_setting():
    ckpt = random_official_checkpoint(official_key_list(), n_mels=80)
    with pytest.raises(ValueError, match=r"torchfb\.0\.mel_scale\.fb.*80 mel bins.*64.*--n_mels 80"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


@pytest.mark.parametrize("frontend", ["torchfb.0.", "torchfb."])
def test_front_end_of_other_features_is_refused(frontend):
    official = official_key_list()
    ckpt = random_official_checkpoint(official, frontend)
    state = ckpt["model_state_dict"]
    state[f"__S__.{frontend}spectrogram.window"] = torch.hann_window(400)  # a Hann window instead of Hamming
    with pytest.raises(ValueError, match=r"spectrogram\.window.*analysis window.*Hamming"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())
    state[f"__S__.{frontend}spectrogram.window"] = torch.hamming_window(400)
    fb = state[f"__S__.{frontend}mel_scale.fb"]
    state[f"__S__.{frontend}mel_scale.fb"] = fb * 1.01  # same size, other values (another mel scale, say)
    with pytest.raises(ValueError, match=r"mel_scale\.fb.*mel filterbank.*differs"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())
    state[f"__S__.{frontend}mel_scale.fb"] = fb + 1e-7  # rounding of another torchaudio version is accepted
    convert_official_checkpoint(ckpt, half_asp().state_dict())


def test_pre_emphasis_front_end_is_refused():
    ckpt = random_official_checkpoint(official_key_list())
    ckpt["model_state_dict"]["__S__.torchfb.0.flipped_filter"] = torch.tensor([[[-0.97, 1.0]]])
    with pytest.raises(ValueError, match=r"flipped_filter.*pre-emphasis"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


@pytest.mark.slow
def test_converted_model_computes_what_the_official_formulation_computes():
    torch.manual_seed(0)
    ref = ReferenceResNet(WIDTHS_HALF, RESNET34_DEPTHS, nOut=512, encoder_type="ASP", n_mels=64).double()
    for m in ref.modules():  # random affine, running statistics of one batch
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    wave = torch.randn(2, 4_000, dtype=torch.float64)
    with torch.no_grad():
        ref.train()(wave)
    ckpt = {"model_state_dict": {"__S__." + k: v for k, v in ref.state_dict().items()}}
    model = half_asp().double()
    model.load_state_dict(convert_official_checkpoint(ckpt, model.state_dict())[0])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(wave), ref.eval()(wave), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.train()(wave), ref.train()(wave), rtol=1e-9, atol=1e-9)


def test_unknown_key_is_named():
    ckpt = {"model_state_dict": {"__S__.conv1.weight": torch.zeros(32, 1, 7, 7),
                                 "__S__.layer1.0.se.fc.weight": torch.zeros(2)}}
    with pytest.raises(ValueError, match=r"__S__\.layer1\.0\.se\.fc\.weight"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


def test_key_of_another_architecture_is_named():
    ckpt = {"model_state_dict": {"__S__.layer5.0.conv1.conv.weight": torch.zeros(32, 32, 3, 3)}}
    with pytest.raises(ValueError, match=r"layer5\.0\.conv1\.w0.*does not have"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


def test_wrong_shape_is_named_with_both_shapes():
    official = official_key_list()
    ckpt = random_official_checkpoint(official)
    ckpt["model_state_dict"]["__S__.fc.weight"] = torch.zeros(256, 4096)
    with pytest.raises(ValueError, match=r"__S__\.fc\.weight.*\(256, 4096\).*\(512, 4096\)"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


def test_missing_tensors_are_listed():
    official = official_key_list()
    ckpt = random_official_checkpoint(official)
    del ckpt["model_state_dict"]["__S__.layer3.1.conv2.q.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*layer3\.1\.conv2\.q"):
        convert_official_checkpoint(ckpt, half_asp().state_dict())


def test_other_formats_are_not_official():
    assert not is_official_checkpoint({"model": {}, "optimizer": {}})
    assert not is_official_checkpoint({"model_state_dict": {"conv1.weight": torch.zeros(1)}})
    assert not is_official_checkpoint([1, 2])
    with pytest.raises(ValueError, match="not an official DTDY-CNN checkpoint"):
        convert_official_checkpoint({"model": {}}, {}, source="exps/x/model000.model")


def test_rules_map_representative_keys():
    assert map_official_key("layer1.0.conv1.bn2.running_mean")[0] == "layer1.0.conv1.bn_mix.running_mean"
    assert map_official_key("layer2.0.downsample.0.fc_phi.fc1.bias")[0] == "layer2.0.downsample.0.phi.conv_in.bias"
    assert map_official_key("layer2.0.downsample.1.weight")[0] == "layer2.0.downsample.1.weight"
    assert map_official_key("layer3.5.bn2.bias")[0] == "layer3.5.bn2.bias"
    assert map_official_key("attention.3.weight")[0] == "pooling.attention.3.weight"


@pytest.mark.slow
def test_eval_runs_on_an_official_checkpoint(corpus, tmp_path):
    """--initial_model recognises the official format, and --eval scores a trial list with it."""
    import json

    import trainSpeakerNet
    from conftest import tiny_argv

    official_key_list()  # skips without the reference list
    torch.manual_seed(0)  # an official-format checkpoint of initialised (not random-valued) weights
    ref = ReferenceResNet(WIDTHS_HALF, RESNET34_DEPTHS, nOut=512, encoder_type="ASP", n_mels=64)
    for module in ref.modules():  # running statistics of real activations, as a trained model has
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        ref.train()(torch.randn(4, 12000))
    state = {"__S__." + k: v for k, v in ref.state_dict().items()}
    state.update({k: torch.randn(s) * 0.01 for k, s in LOSS_HEAD.items()})
    path = tmp_path / "official.model"
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}}, path)
    save = tmp_path / "eval"
    args = tiny_argv(corpus, save, "--eval", "--initial_model", str(path), "--model", "DTDY_ResNet34_half",
                     "--encoder_type", "ASP", "--n_mels", "64", "--nOut", "512", "--nClasses", "5994")
    assert trainSpeakerNet.main(args) == 0
    metrics = json.loads((save / "result" / "test_list" / "metrics.json").read_text())["variants"]["raw"]
    assert metrics["n_trials"] == len((corpus / "test_list.txt").read_text().splitlines())


def test_official_checkpoint_of_another_configuration_is_refused(corpus, tmp_path, caplog):
    import trainSpeakerNet
    from conftest import tiny_argv

    path = tmp_path / "official.model"
    torch.save(random_official_checkpoint(official_key_list()), path)
    args = tiny_argv(corpus, tmp_path / "x", "--eval", "--initial_model", str(path), "--model", "DTDY_ResNet34_half",
                     "--encoder_type", "SAP", "--n_mels", "64", "--nOut", "512")
    assert trainSpeakerNet.main(args) == 2
    assert "does not fit the configured model" in caplog.text


def test_official_checkpoint_of_another_n_mels_names_the_flag(corpus, tmp_path, caplog):
    import trainSpeakerNet
    from conftest import tiny_argv

    path = tmp_path / "official.model"
    torch.save(random_official_checkpoint(official_key_list(), n_mels=80), path)
    args = tiny_argv(corpus, tmp_path / "x", "--eval", "--initial_model", str(path), "--model", "DTDY_ResNet34_half",
                     "--encoder_type", "ASP", "--n_mels", "64", "--nOut", "512")
    assert trainSpeakerNet.main(args) == 2
    assert "set --n_mels 80" in caplog.text
    assert path.exists()  # the checkpoint is left as it was
