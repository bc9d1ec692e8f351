"""Model contract over all six variants, config validation, and the pieces the paper specifies."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segformer import SegFormer, SegFormerConfig, create_model, list_models, load_model
from segformer.model.config import VARIANTS
from segformer.model.flops import count_macs, count_params
from segformer.model.layers import DropPath, drop_path_rates

RELEASED = [name for name in VARIANTS if not name.endswith("-paper")]  # the paper-spec rows: tests/test_pvt.py

# Official parameter counts with 150 classes (segformer-facts.md section 9).
OFFICIAL_PARAMS = {
    "b0": 3_752_694,
    "b1": 13_715_798,
    "b2": 27_461_974,
    "b3": 47_337_814,
    "b4": 64_108_374,
    "b5": 84_708_694,
}
# Paper Table 1(a), ADE20K column (GFLOPs = GMACs incl. attention), 512x512 (B5: 640x640).
PAPER_GMACS = {"b0": (8.4, 512), "b1": (15.9, 512), "b2": (62.4, 512), "b3": (79.0, 512), "b4": (95.7, 512)}
PAPER_GMACS["b5"] = (183.3, 640)


@pytest.mark.parametrize("name", RELEASED)
def test_parameter_counts_match_official(name):
    assert count_params(SegFormerConfig.from_name(name))["total"] == OFFICIAL_PARAMS[name]
    # 19 classes: the classifier shrinks by 131 * C
    small = count_params(SegFormerConfig.from_name(name, num_classes=19))["total"]
    assert OFFICIAL_PARAMS[name] - small == 131 * (256 if name in ("b0", "b1") else 768) + 131


@pytest.mark.parametrize("name", RELEASED)
def test_gmacs_within_two_percent_of_paper(name):
    paper, size = PAPER_GMACS[name]
    gmacs = count_macs(SegFormerConfig.from_name(name), (size, size)) / 1e9
    assert abs(gmacs - paper) / paper < 0.02


@pytest.mark.parametrize("name", RELEASED)
def test_contract_every_variant(name, tmp_path):
    """Odd input size: shapes ceil(H/4); no NaN; every parameter gets a gradient; strict save/load round trip."""
    model = create_model(name, num_classes=5, drop_path_rate=0.0)  # a dropped branch would get no gradient
    x = torch.randn(1, 3, 65, 97)
    model.train()
    logits = model(x)
    assert logits.shape == (1, 5, 17, 25)
    assert torch.isfinite(logits).all()
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())

    features = model.eval().forward_features(x)
    assert [f.shape[1] for f in features] == list(model.config.embed_dims)
    assert [tuple(f.shape[-2:]) for f in features] == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert [info["num_chs"] for info in model.encoder.feature_info] == list(model.config.embed_dims)

    model.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_list_models_and_variant_table():
    assert list_models()[:6] == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert list_models()[6:] == ["b0-paper", "b1-paper", "b2-paper", "b3-paper", "b4-paper"]
    cfg = SegFormerConfig.from_name("mit-b3")
    assert cfg.depths == (3, 4, 18, 3) and cfg.decoder_dim == 768 and cfg.name == "b3"
    with pytest.raises(ValueError, match="unknown SegFormer variant 'b9'"):
        SegFormerConfig.from_name("b9")


def test_config_round_trip_and_validation(tmp_path):
    cfg = SegFormerConfig.from_name("b1", num_classes=3, class_names=("a", "b", "c"))
    cfg.save_json(tmp_path / "c.json")
    again = SegFormerConfig.from_dict(json.loads((tmp_path / "c.json").read_text()))
    assert again == cfg and isinstance(again.class_names, tuple) and hash(again) == hash(cfg)
    with pytest.raises(ValueError, match="unknown SegFormerConfig fields"):
        SegFormerConfig.from_dict({"embed_dim": 3})
    with pytest.raises(ValueError, match="one entry per stage"):
        SegFormerConfig(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        SegFormerConfig(num_heads=(3, 2, 5, 8))
    with pytest.raises(ValueError, match="class_names has 2 names"):
        SegFormerConfig(num_classes=3, class_names=("a", "b"))


def test_every_config_field_reaches_the_model():
    base = SegFormerConfig(embed_dims=(16, 32, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), decoder_dim=32)
    m = SegFormer(base.replace(mlp_ratio=2, layer_norm_eps=1e-3, drop_path_rate=0.3, classifier_dropout=0.2))
    block = m.encoder.stages[1].blocks[1]
    assert block.ffn.fc1.out_features == 64 and block.norm1.eps == 1e-3 and m.encoder.stages[3].norm.eps == 1e-3
    assert m.encoder.stages[0].patch_embed.norm.eps == 1e-5  # patch-embed and reduction norms keep torch's default
    assert m.encoder.stages[0].blocks[0].attn.norm.eps == 1e-5
    assert m.encoder.stages[3].blocks[0].drop_path.p == pytest.approx(0.3)
    assert m.head.dropout.p == 0.2 and isinstance(m.head.dropout, nn.Dropout2d)
    m = SegFormer(base.replace(sr_ratios=(4, 2, 1, 1), in_channels=5, num_classes=9))
    assert m.encoder.stages[0].blocks[0].attn.sr.kernel_size == (4, 4)
    assert not hasattr(m.encoder.stages[2].blocks[0].attn, "sr")
    assert m.encoder.stages[0].patch_embed.proj.in_channels == 5 and m.head.classifier.out_channels == 9
    assert m.encoder.stages[1].blocks[0].attn.num_heads == 2


def test_patch_embeds_and_reductions_follow_the_paper():
    m = create_model("b0")
    kernels = [
        (s.patch_embed.proj.kernel_size, s.patch_embed.proj.stride, s.patch_embed.proj.padding)
        for s in m.encoder.stages
    ]
    assert kernels == [((7, 7), (4, 4), (3, 3))] + [((3, 3), (2, 2), (1, 1))] * 3
    assert [s.blocks[0].attn.sr_ratio for s in m.encoder.stages] == [8, 4, 2, 1]
    assert m.head.fuse.bias is None and m.head.fuse.in_channels == 4 * 256
    assert not any("conv_seg" in k for k in m.state_dict())


def test_initial_loss_is_near_uniform():
    """A fresh model predicts nearly uniform classes: cross-entropy starts near ln(K), as it should from scratch."""
    model = create_model("b0", num_classes=7).eval()
    logits = model(torch.randn(2, 3, 64, 64))
    loss = nn.functional.cross_entropy(logits, torch.randint(0, 7, (2, 16, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(7.0)).item()) < 0.1


def test_drop_path_schedule_and_behaviour():
    rates = drop_path_rates((2, 2, 2, 2), 0.1)
    assert rates[0][0] == 0.0 and rates[-1][-1] == pytest.approx(0.1)
    flat = [r for stage in rates for r in stage]
    assert flat == sorted(flat) and len(flat) == 8
    dp = DropPath(0.5).train()
    y = dp(torch.ones(1000, 4, 3))
    kept = (y[:, 0, 0] > 0).float().mean().item()
    assert 0.4 < kept < 0.6 and set(y.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(dp.eval()(torch.ones(3, 2)), torch.ones(3, 2))


def test_minimum_input_size():
    m = create_model("b0").eval()
    assert m.encoder.min_size == 29
    with torch.no_grad():
        assert m(torch.randn(1, 3, 29, 31)).shape[-2:] == (8, 8)
        with pytest.raises(ValueError, match=r"too small: this model needs H, W >= 29"):
            m(torch.randn(1, 3, 28, 64))


def test_in_channels_adapts_pretrained_first_conv(tmp_path):
    """Gray input through a 1-channel model equals (g, g, g) through the RGB model; 6 channels likewise."""
    rgb = create_model("b0", num_classes=4)
    rgb.save_pretrained(tmp_path)
    rgb.eval()
    gray = create_model("b0", num_classes=4, in_channels=1, pretrained=tmp_path).eval()
    six = create_model("b0", num_classes=4, in_channels=6, pretrained=tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    g = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        ref_gray = rgb.forward_features(g.expand(1, 3, 64, 64))
        ref_six = rgb.forward_features(x)
        for a, b in zip(gray.forward_features(g), ref_gray, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for a, b in zip(six.forward_features(torch.cat([x, x], 1)), ref_six, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
