"""The fast path is the same function: folded decoder vs the paper's literal order, in every mode that matters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reference import randomize
from segformer import VARIANTS, create_model
from segformer.model.head import AllMLPHead

TOL = 1e-5


@pytest.fixture(scope="module")
def b0_model():
    """One randomised B0 (7 classes) per module; tests take deep copies."""
    model = create_model("b0", num_classes=7)
    randomize(model, seed=1)
    return model


def _both(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = model.encoder(x)
    return model.head(features), model.head.forward_unfolded(features)


@pytest.mark.parametrize("name", [n for n in VARIANTS if not n.endswith("-paper")])
def test_folded_matches_unfolded_every_variant(name):
    # The fold lives in the head, whose shape depends on the widths only; one block per stage keeps B3-B5 cheap.
    depths = None if name == "b0" else (1, 1, 1, 1)
    model = create_model(name, num_classes=19, **({"depths": depths} if depths else {}))
    randomize(model)
    model.eval()
    x = torch.randn(2, 3, 61, 99)  # odd sizes: ceil division everywhere, non-integer upsampling factors
    with torch.no_grad():
        folded, unfolded = _both(model, x)
    assert folded.shape == (2, 19, 16, 25)
    assert unfolded.abs().max() > 1.0
    torch.testing.assert_close(folded, unfolded, atol=TOL, rtol=0)


@pytest.mark.parametrize("size", [(29, 29), (64, 64), (97, 130), (130, 97)])
def test_folded_matches_unfolded_sizes(b0_model, size):
    model = b0_model.eval()
    with torch.inference_mode():
        folded, unfolded = _both(model, torch.randn(1, 3, *size))
    assert folded.shape[-2:] == (-(-size[0] // 4), -(-size[1] // 4))
    torch.testing.assert_close(folded, unfolded, atol=TOL, rtol=0)


def test_model_forward_uses_fold_and_flag_switches_back(b0_model):
    model = copy.deepcopy(b0_model).eval()
    x = torch.randn(1, 3, 64, 80)
    calls = []
    handle = model.head.fuse.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fast = model(x)
        assert calls == []  # the 1x1 fuse conv over 4C channels is never run on the folded path
        model.head.fold = False
        slow = model(x)
        assert calls == [1]
    handle.remove()
    torch.testing.assert_close(fast, slow, atol=TOL, rtol=0)


def test_training_mode_same_outputs_and_gradients():
    """Train mode: BN uses batch statistics on the same pre-BN tensor; gradients reach every head parameter alike."""
    head = AllMLPHead((8, 16, 24, 32), 24, num_classes=6, dropout=0.0)
    randomize(head, seed=3)
    head.train()
    features = [torch.randn(2, c, s, s + 1) for c, s in ((8, 16), (16, 8), (24, 4), (32, 2))]
    results = []
    for fold in (True, False):
        h = copy.deepcopy(head)
        h.fold = fold
        feats = [f.clone().requires_grad_() for f in features]
        out = h(feats)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad for n, p in h.named_parameters()}
        results.append((out, grads, [f.grad for f in feats], h.bn.running_mean.clone()))
    (o1, g1, f1, m1), (o2, g2, f2, m2) = results
    torch.testing.assert_close(o1, o2, atol=TOL, rtol=0)
    assert g1.keys() == g2.keys() and len(g1) == 13
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-4, rtol=1e-4, msg=name)
    for a, b in zip(f1, f2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m1, m2, atol=1e-6, rtol=0)  # BN saw the same batch statistics


@pytest.mark.parametrize("norm", ["sync", "no_running_stats"])
def test_batchnorm_kinds(b0_model, norm):
    model = copy.deepcopy(b0_model)
    if norm == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # what DDP training does
        assert isinstance(model.head.bn, nn.SyncBatchNorm)
    else:
        model.head.bn = nn.BatchNorm2d(model.head.bn.num_features, track_running_stats=False)
    model.eval()
    with torch.no_grad():
        folded, unfolded = _both(model, torch.randn(2, 3, 64, 96))
    # Batch statistics divide by this batch's own std, which magnifies fp32 rounding a little (~1e-5 seen).
    torch.testing.assert_close(folded, unfolded, atol=TOL if norm == "sync" else 1e-4, rtol=0)


def test_folded_weights_never_stale(b0_model):
    model = copy.deepcopy(b0_model).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
        again = model(x)  # served from the cache
    torch.testing.assert_close(before, again, atol=0, rtol=0)
    other = copy.deepcopy(model)
    randomize(other, seed=6)
    model.load_state_dict(other.state_dict())  # in-place copies: same tensors, new versions
    with torch.inference_mode():
        after = model(x)
        reference = model.head.forward_unfolded(model.encoder(x))
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, reference, atol=TOL, rtol=0)
    with torch.no_grad():
        model.head.bn.running_var.mul_(4.0)  # a buffer change alone must invalidate the cache too
        torch.testing.assert_close(model(x), model.head.forward_unfolded(model.encoder(x)), atol=TOL, rtol=0)


def test_state_dict_unchanged_by_fast_layout(b0_model):
    model = b0_model
    keys = list(model.state_dict())
    assert not any("_cache" in k for k in keys)
    assert "head.fuse.weight" in keys and "encoder.stages.0.blocks.0.ffn.dwconv.weight" in keys
    conv = model.encoder.stages[0].blocks[0].ffn.dwconv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.stride(1) == 1


def test_inference_fast_path_matches_autograd_path(b0_model):
    """Under no_grad the blocks accumulate projections into the residual in place; with autograd they do not."""
    model = copy.deepcopy(b0_model).eval()
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        fast = model.encoder(x)
    with torch.enable_grad():
        plain = model.encoder(x)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b.detach(), atol=TOL, rtol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast takes the plain path: no error
        assert model(x).shape == (2, 7, 17, 12)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_inference_is_linear(bias):
    """oneDNN's 1x1-conv GEMM of the fast path gives F.linear's values (batch 2, a width that is no SIMD multiple),
    and leaves bf16 tensors to F.linear."""
    from segformer.model.layers import dense_inference

    x, weight = torch.randn(2, 37, 24), torch.randn(13, 24)
    b = torch.randn(13) if bias else None
    with torch.no_grad():
        out = dense_inference(x, weight, b)
        torch.testing.assert_close(out, nn.functional.linear(x, weight, b), atol=1e-5, rtol=1e-5)
        assert out.shape == (2, 37, 13) and out.is_contiguous()
        low = dense_inference(x.bfloat16(), weight.bfloat16(), None if b is None else b.bfloat16())
    assert low.dtype == torch.bfloat16


def test_folded_path_runs_on_meta_device():
    """Shape/FLOP counting on the meta device goes through the folded head too (no autocast there)."""
    from torch.utils.flop_counter import FlopCounterMode

    from segformer import SegFormer, SegFormerConfig

    config = SegFormerConfig.from_name("b0", num_classes=150)
    macs = {}
    for fold in (False, True):
        with torch.device("meta"):
            model = SegFormer(config).eval()
            model.head.fold = fold
            x = torch.empty(1, 3, 512, 512)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            assert model(x).shape == (1, 150, 128, 128)
        macs[fold] = counter.get_total_flops() / 2e9
    assert 8.3 < macs[False] < 8.5 and macs[True] < 0.5 * macs[False]  # the fold removes about half of B0's MACs
