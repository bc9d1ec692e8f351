"""PVTv2 ImageNet encoders in both published layouts, against timm's own `pvt_v2_bX` (the independent reference).

Random weights stand in for the real files (no downloads here): a timm hub folder (`config.json` + `model.safetensors`
in timm's key names) and a whai362 `.pth` (the original names, which timm's `checkpoint_filter_fn` maps to timm's).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from segformer import CheckpointError, create_model
from segformer.model.classifier import MiTClassifier
from segformer.model.config import IMAGENET, VARIANTS, SegFormerConfig, variant_key
from segformer.model.convert import from_ours, original_to_timm, timm_to_original, to_ours
from segformer.model.loading import load_classifier
from segformer.runtime import import_timm

TOL = 1e-5
SIZE = (61, 93)  # odd: every stage rounds up; small: B5 runs in a second


def timm_pvt(name: str, seed: int = 0):
    """timm's pvt_v2_`name` with every parameter random (LayerNorms too, so a swapped norm cannot hide). Built on the
    meta device and filled here: timm's own initialisation of B4 takes longer than the whole comparison."""
    timm = import_timm()
    with torch.device("meta"):
        model = timm.create_model(f"pvt_v2_{name}", pretrained=False)
    model = model.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            scale = 0.3 if p.ndim == 1 else (1 / p[0].numel()) ** 0.5  # fan-in scale: activations stay O(1)
            p.copy_(
                torch.randn(p.shape, generator=g) * scale + (1.0 if "norm" in key and key.endswith("weight") else 0)
            )
    return model


def save_timm_folder(model, folder):
    """A timm hub folder as `timm/pvt_v2_bX.in1k` holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"architecture": model.default_cfg["architecture"], "num_classes": 1000, "pretrained_cfg": {}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def save_whai362(model, path):
    """A whai362/PVT release file (`pvt_v2_bX.pth`): the original key names, checked against timm's own mapping."""
    timm_sd = model.state_dict()
    original = timm_to_original(timm_sd)
    from timm.models.pvt_v2 import checkpoint_filter_fn

    assert set(checkpoint_filter_fn(original, model)) == set(timm_sd)  # timm maps our inverse back to its names
    torch.save(original, path)
    return path


def assert_features_equal(ours, theirs, x):
    with torch.no_grad():
        mine = ours.encoder(x)
        ref = theirs.forward_intermediates(x, intermediates_only=True)
    assert [f.shape for f in mine] == [f.shape for f in ref]
    for a, b in zip(mine, ref, strict=True):
        assert b.abs().max() > 0.1
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "name", ["b0", "b1", "b2", *(pytest.param(n, marks=pytest.mark.slow) for n in ("b3", "b4", "b5"))]
)
def test_features_and_logits_equal_timm_in_both_layouts(name, tmp_path, caplog):
    reference = timm_pvt(name)
    x = torch.randn(2, 3, *SIZE)
    variant = variant_key(f"pvt_v2_{name}")
    for source in (
        save_timm_folder(reference, tmp_path / "timm"),
        save_whai362(reference, tmp_path / f"pvt_v2_{name}.pth"),
    ):
        with caplog.at_level(logging.WARNING, logger="segformer"):
            model = create_model("auto", num_classes=19, pretrained=source).eval()
        assert model.config.name == variant  # chosen from the tensor shapes
        assert model.config.licence["origin"] == "pvtv2"
        assert_features_equal(model, reference, x)
    classifier = load_classifier(tmp_path / "timm")
    assert classifier.config.name == variant
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), reference(x), atol=TOL, rtol=0)


def test_convert_to_ours_and_back_is_bitwise():
    sd = timm_pvt("b1").state_dict()
    ours = to_ours(sd, classifier=True)
    assert "classifier.weight" in ours and all(k.startswith(("encoder.", "classifier.")) for k in ours)
    back = from_ours(ours, "timm")
    assert list(back) == list(sd) or set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    original = timm_to_original(sd)
    assert all(torch.equal(a, b) for a, b in zip(original_to_timm(original).values(), sd.values(), strict=True))


def test_released_shape_is_a_clear_error_or_an_explicit_partial_load(tmp_path, caplog):
    reference = timm_pvt("b0")
    path = save_whai362(reference, tmp_path / "pvt_v2_b0.pth")
    with pytest.raises(CheckpointError, match=r"pvt_v2_b0.pth: holds a b0-paper encoder .* does not fit b0 .*b0-paper"):
        create_model("b0", pretrained=path)
    with caplog.at_level(logging.WARNING, logger="segformer"):
        model = create_model("b0", pretrained=path, partial=True)
    warning = next(r.getMessage() for r in caplog.records if "re-initialised (" in r.getMessage())
    # 5 tensors per stage-1/2 block (fc1 weight+bias, dwconv weight+bias, fc2 weight): 4 blocks in B0
    assert "20 re-initialised" in warning and "stages.0.blocks.0.ffn.fc1.weight" in warning
    share = float(warning.split("re-initialised (")[1].split("%")[0])
    assert 1.5 < share < 2.75  # the reference notes: 1.5-2.7% of the encoder
    theirs = reference.state_dict()
    assert torch.equal(model.encoder.stages[2].blocks[1].ffn.fc1.weight, theirs["stages.2.blocks.1.mlp.fc1.weight"])
    assert torch.equal(model.encoder.stages[0].blocks[0].ffn.fc2.bias, theirs["stages.0.blocks.0.mlp.fc2.bias"])
    assert model.config.licence["origin"] == "pvtv2"


def test_b2_partial_count_and_depth_mismatch(tmp_path):
    path = save_whai362(timm_pvt("b2"), tmp_path / "pvt_v2_b2.pth")
    model = create_model("b2", pretrained=path, partial=True)
    assert "35 encoder tensors re-initialised" in model.config.licence["history"][-1]
    with pytest.raises(CheckpointError, match=r"holds a b2-paper encoder .*does not fit b1: use --model b2-paper"):
        create_model("b1", pretrained=path, partial=True)  # other depths: never a partial load


def test_nvidia_layout_stays_non_commercial(tmp_path):
    """NVIDIA's mit_bX.pth has the original key names too: FFN 4 and no PVTv2 name reads as NVIDIA's."""
    sd = from_ours(create_model("b0").state_dict(), "official")
    encoder = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    torch.save(encoder, tmp_path / "mit_b0.pth")
    assert create_model("b0", pretrained=tmp_path / "mit_b0.pth").config.licence["origin"] == "nvidia"
    torch.save(encoder, tmp_path / "pvt_v2_b5_like_b0.pth")  # the PVTv2 name is what tells B5 files apart
    assert create_model("b0", pretrained=tmp_path / "pvt_v2_b5_like_b0.pth").config.licence["origin"] == "pvtv2"


@pytest.mark.parametrize("name", list(IMAGENET))
def test_paper_rows_count_table7(name):
    """Paper Table 7 (ImageNet, 224x224, 1000 classes): params to 0.1 M, GFLOPs (= GMACs incl. attention) within 0.1."""
    params_m, gflops, _ = IMAGENET[name]
    with torch.device("meta"):
        model = MiTClassifier(SegFormerConfig.from_name(name, num_classes=1000)).eval()
        x = torch.empty(1, 3, 224, 224)
    assert round(model.num_parameters()["total"] / 1e6, 1) == params_m
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert abs(counter.get_total_flops() / 2e9 - gflops) <= 0.1  # B0 0.57 (0.6), B5 11.72 (11.8)


def test_variant_names():
    assert variant_key("pvt_v2_b2") == "b2-paper" and variant_key("pvt-v2-b5") == "b5"
    assert variant_key("MiT_B3_paper") == "b3-paper" and "b4-paper" in VARIANTS
    assert SegFormerConfig.from_name("b2-paper").mlp_ratios == (8, 8, 4, 4)
    assert SegFormerConfig.from_name("b2").mlp_ratio == 4
