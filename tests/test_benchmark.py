"""`segformer benchmark` and its peers (apps/peers.py): the rows, their ratios, and that every peer computes what ours
does (transformers' model with the same weights, ONNX Runtime on both exports, the training steps)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import TINY
from segformer import create_model
from segformer.apps import peers
from segformer.apps.benchmark import (
    BenchmarkOptions,
    argmax_agreement,
    compare_training_step,
    run_benchmark,
    sample_image,
    sample_labels,
)
from segformer.cli import main


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("b0", num_classes=5, **TINY).eval()
    with torch.no_grad():  # BN statistics away from identity so the folded BN matters
        m.head.bn.running_mean.normal_()
        m.head.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_benchmark_rows_and_ratios(model):
    result = run_benchmark(model, BenchmarkOptions(size=(64, 64), threads=1, unfolded=True, onnx=False, repeats=2))
    names = [r.name for r in result.rows]
    assert names == ["ours eager fp32", "ours, decoder unfolded (paper order)"]
    base, paper = result.rows
    assert base.ratio == pytest.approx(1.0) and base.latency_ms > 0
    assert paper.max_abs_diff is not None and paper.max_abs_diff <= 1e-4 and paper.agreement == 1.0  # see test_fast
    assert "| ours eager fp32 |" in result.table()


def test_benchmark_compare_needs_transformers(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["benchmark", "--model", "b0", "--compare", "--size", "64"]) == 2
    assert "needs transformers" in capsys.readouterr().err


def test_bf16_autocast_close_to_fp32(model):
    """bf16 changes the numbers a little, not the function: same shape, small error, most pixels agree."""
    x = sample_image((96, 128))
    fp32 = peers.inference_fn(model, x)()
    bf16 = peers.inference_fn(model, x, dtype="bf16")()
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().max() < 0.1 * fp32.abs().max()
    assert argmax_agreement(bf16, fp32) > 0.9
    with pytest.raises(ValueError, match="fp16"):
        peers.inference_fn(model, x, dtype="fp16")


@pytest.mark.onnx
def test_compared_peers_compute_what_ours_does(model):
    """transformers' model (the independent reference) and ONNX Runtime on both exports, side by side with ours:
    the logits agree to float order, every row is timed against transformers eager."""
    result = run_benchmark(model, BenchmarkOptions(size=(64, 64), threads=1, compare=True, repeats=2, memory=False))
    rows = {r.name: r for r in result.rows}
    assert list(rows) == ["transformers eager", "ours eager fp32", peers.ORT_HF, peers.ORT_OURS, peers.ORT_OURS_FUSED]
    assert rows["transformers eager"].ratio == pytest.approx(1.0)
    for row in result.rows:
        assert row.max_abs_diff <= 1e-4 and row.agreement == 1.0, row
    assert result.versions.keys() >= {"torch", "transformers", "onnxruntime"}
    assert any(n.startswith(f"{peers.ORT_OURS} / transformers' export = ") for n in result.notes)


def test_peers_run_transformers_with_our_weights():
    """The peer is transformers' own model with our weights: the same logits, and from the same weights one training
    step of each gives the same loss and gradients (checked against transformers' step in float64)."""
    ours = create_model("b0", num_classes=5, layer_norm_eps=1e-5, **TINY)  # transformers' eps everywhere
    hf = peers.transformers_model(ours)
    assert type(hf).__name__ == "SegformerForSemanticSegmentation" and not hf.training
    x, y = sample_image((64, 96)), sample_labels((64, 96), 1, 5)
    torch.testing.assert_close(peers.transformers_fn(hf, x)(), peers.inference_fn(ours, x)(), atol=1e-5, rtol=0)
    check = compare_training_step(ours, hf, x, y)
    assert check.agrees and abs(check.loss - check.hf_loss) < 1e-5, check
    before = hf.decode_head.classifier.weight.detach().clone()
    assert torch.isfinite(peers.transformers_train_step_fn(hf, x, y, lr=1e-2)()) and hf.training
    assert not torch.equal(before, hf.decode_head.classifier.weight)  # a real optimiser step


def test_cli_train_benchmark_checks_the_step_and_writes_json(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["benchmark", "--train", "--model", "b0", "--num-classes", "3", "--size", "64x64", "--batch", "1"]
    assert main([*argv, "--threads", "1", "--repeats", "1", "--warmup", "0", "--no-memory", "--json", str(out)]) == 0
    assert "| ours |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["transformers", "ours"] and result["kind"] == "train"
    assert result["size"] == [64, 64] and any("AGREE" in n and "DISAGREE" not in n for n in result["notes"])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file
