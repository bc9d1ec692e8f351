"""Logits parity with an independent reference: transformers' SegformerForSemanticSegmentation (random weights).

Both directions: we load their hub-layout checkpoint, they load our `save_pretrained` folder. The official NVlabs and
smp layouts are produced from the same weights by the test's own key maps (tests/reference.py).
"""

from __future__ import annotations

import pytest
import torch

from reference import hf_model, hf_to_official, hub_state_dict, official_to_smp, randomize, set_block_eps
from segformer import SegFormerConfig, create_model, load_model

TOL = 2e-5
SIZES = [(256, 320), (300, 413)]


@pytest.fixture(scope="module", params=["b0", "b2"])
def reference(request, tmp_path_factory):
    """(config, transformers model, folder holding its save_pretrained output, hub-layout state dict)."""
    config = SegFormerConfig.from_name(request.param, num_classes=19)
    folder = tmp_path_factory.mktemp(f"hf_{request.param}")
    model = hf_model(config, seed=1)
    return config, model, folder, hub_state_dict(model, folder)


def _hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("size", SIZES)
def test_we_load_theirs(reference, size):
    config, ref, folder, _ = reference
    ours = load_model(folder)
    assert ours.config.name == config.name and ours.config.num_classes == 19
    x = torch.randn(2, 3, *size)
    expected = _hf_logits(ref, x)
    with torch.no_grad():
        got = ours(x)
    assert got.shape == (2, 19, -(-size[0] // 4), -(-size[1] // 4))
    assert _max_diff(got, expected) <= TOL


@pytest.fixture(scope="module")
def theirs_from_ours(reference, tmp_path_factory):
    """(our model, transformers' model loaded from our save_pretrained folder)."""
    import transformers

    config = reference[0]
    ours = create_model(config.name, num_classes=7, class_names=tuple("abcdefg"))
    randomize(ours, seed=2)  # weights and BN statistics away from init
    folder = ours.eval().save_pretrained(tmp_path_factory.mktemp("ours"))
    theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    set_block_eps(theirs, config.layer_norm_eps)
    return ours, theirs


@pytest.mark.parametrize("size", SIZES)
def test_they_load_ours(theirs_from_ours, size):
    ours, theirs = theirs_from_ours
    assert theirs.config.id2label[6] == "g"
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        got = ours(x)
    assert _max_diff(got, _hf_logits(theirs, x)) <= TOL


@pytest.mark.parametrize("layout", ["official", "smp", "transformers-in-memory"])
def test_official_and_smp_checkpoints(reference, layout, tmp_path):
    _, ref, _, hub = reference
    official = hf_to_official(hub)
    if layout == "official":
        path = tmp_path / "segformer.160k.pth"
        names = tuple(f"cls{i}" for i in range(19))
        torch.save({"meta": {"CLASSES": names, "config": "num_classes=19"}, "state_dict": official}, path)
    elif layout == "smp":
        path = tmp_path / "smp.pth"
        torch.save(official_to_smp(official), path)
    else:  # transformers 5.x renames modules in memory; users torch.save(model.state_dict()) that layout
        path = tmp_path / "hf_state_dict.pt"
        torch.save(ref.state_dict(), path)
    ours = load_model(path)
    if layout == "official":
        assert ours.config.class_names == names
    x = torch.randn(1, 3, *SIZES[1])
    with torch.no_grad():
        got = ours(x)
    assert _max_diff(got, _hf_logits(ref, x)) <= TOL


def _hf_features(ref, x):
    with torch.no_grad():
        return ref.segformer(pixel_values=x, output_hidden_states=True).hidden_states


def test_pretrained_encoder_from_imagenet_backbone_file(reference, tmp_path):
    """An ImageNet `mit_bX.pth` is a plain dict of backbone keys plus a 1000-class `head.*`."""
    config, ref, _, hub = reference
    backbone = {k.removeprefix("backbone."): v for k, v in hf_to_official(hub).items() if k.startswith("backbone.")}
    backbone["head.weight"] = torch.randn(1000, config.embed_dims[-1])
    backbone["head.bias"] = torch.randn(1000)
    torch.save(backbone, tmp_path / f"mit_{config.name}.pth")
    model = create_model(config.name, num_classes=3, pretrained=tmp_path / f"mit_{config.name}.pth").eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.forward_features(x)
    for got, expected in zip(ours, _hf_features(ref, x), strict=True):
        assert _max_diff(got, expected) <= TOL


def test_pretrained_encoder_from_hf_classification_folder(tmp_path):
    """`nvidia/mit-b0` is a SegformerForImageClassification: `segformer.encoder.*` + a 1000-class `classifier`."""
    import transformers

    cfg = transformers.SegformerConfig(num_labels=1000)
    ref = transformers.SegformerForImageClassification(cfg)
    set_block_eps(ref, 1e-6)
    randomize(ref, 3)
    ref.eval().save_pretrained(tmp_path)
    model = create_model("b0", num_classes=4, pretrained=str(tmp_path)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = ref.segformer(pixel_values=x, output_hidden_states=True).hidden_states
        got = model.forward_features(x)
    for a, b in zip(got, expected, strict=True):
        assert _max_diff(a, b) <= TOL
