"""Deployment: every export format behind the accuracy gate (a broken export is refused), ExecuTorch .pte files
written, checked and run by predict / eval / the app, torch.compile with the eager labels, TensorRT on a GPU."""

from __future__ import annotations

import builtins
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_scenes
from segformer import create_model
from segformer.cli import main
from segformer.data.synth import CLASS_NAMES
from segformer.inference import InferenceOptions, Segmenter

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA not available here)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("b0", num_classes=len(CLASS_NAMES), depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():  # a classifier whose labels vary over the image, so that a broken export shows
        model.head.classifier.weight.normal_(0, 0.5)
    return model.save_pretrained(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A labelled folder dataset of synthetic scenes: ROOT/images/val/*.png, ROOT/masks/val/*.png."""
    return write_scenes(tmp_path_factory.mktemp("scenes"), 8)


def _images(scenes):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((scenes / "images" / "val").glob("*.png"))]


# ---------------------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.onnx
def test_onnx_export_passes_the_gate_on_synthetic_scenes(weights, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert main(["export", str(weights), str(out), "--size", "64"]) == 0
    text = capsys.readouterr().out
    assert "ONNX fp32: kept in higher precision:" in text and "synthetic scenes of 64x64" in text
    line = next(t for t in text.splitlines() if "pixel agreement with the float PyTorch model" in t)
    assert float(line.split(": ")[1].split("%")[0]) >= 99.9  # ORT's float rounding may flip a near-tie
    assert f"wrote {out}" in text and out.is_file()


@pytest.mark.onnx
def test_gate_refuses_a_broken_export(weights, scenes, tmp_path, capsys, monkeypatch):
    """An exporter that writes a wrong graph (here: the first convolution's weights zeroed, as a bad weight
    conversion would) is refused: exit 1, one line on stderr, the report on stdout, nothing written; --force
    writes it with a warning."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from segformer.export import formats
    from segformer.export.runtimes import OnnxForward

    real = formats.WRITERS["onnx"]

    def broken(model, path, settings, calibration, options):
        candidate = real(model, path, settings, calibration, {**options, "check": False})
        proto = onnx.load(str(path))
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        weight = next(t for t in proto.graph.initializer if t.name == conv.input[1])
        weight.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(weight)), weight.name))
        onnx.save(proto, str(path))
        candidate.forward = OnnxForward(path)
        return candidate

    monkeypatch.setitem(formats.WRITERS, "onnx", broken)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    args = ["export", str(weights), str(out), "--size", "64", "--check-images", str(scenes / "images" / "val")]
    assert main(args) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segformer export: refused: ONNX fp32 labels agree with float on")
    assert "below the required 99.00%" in err[0] and "held-out images" in captured.out
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert main([*args, "--force"]) == 0
    assert "written below --min-agreement" in capsys.readouterr().out and out.read_bytes() != b"previous"


@pytest.mark.onnx
def test_format_int8_is_the_onnx_int8_path_and_says_what_stays_float(weights, scenes, tmp_path, capsys):
    """`--format int8` is ONNX Runtime's INT8 behind the same gate (`--int8` still works): the report names each
    group kept in float and why."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m_int8.onnx"
    args = ["--format", "int8", "--calibrate", str(scenes / "images" / "val"), "--calib-count", "4"]
    assert main(["export", str(weights), str(out), *args, "--size", "64", "--min-agreement", "0"]) == 0
    text = capsys.readouterr().out
    assert "INT8:" in text and "layernorm: per-token statistics" in text and "pixel agreement" in text
    assert out.is_file()


def test_gate_library_call_reports_the_mIoU_change(weights, scenes):
    """`compare` through the spine: a candidate equal to the reference agrees on every pixel and has its mIoU."""
    from segformer.data import build_dataset
    from segformer.export.gate import compare, dataset_samples
    from segformer.model.loading import load_model

    model = load_model(weights)
    val = build_dataset("folder", scenes, "val")
    options = InferenceOptions()
    result = compare(Segmenter(model, options), Segmenter(model, options), dataset_samples(val, 4), 7)
    assert result.images == 4 and result.agreement == 1.0 and result.iou_vs_float == pytest.approx(1.0)
    assert result.float_miou == result.candidate_miou and result.float_miou is not None


def test_tensorrt_without_a_gpu_says_so(weights, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the gpu tests cover TensorRT")
    assert main(["export", str(weights), str(tmp_path / "m.engine"), "--format", "tensorrt", "--size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("needs TensorRT" in err[0] or "needs an NVIDIA GPU" in err[0])
    assert not (tmp_path / "m.engine").exists()


# ---------------------------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pte(weights, scenes, tmp_path_factory):
    """An fp32 .pte written by the CLI through the gate (dynamic sizes up to 256)."""
    out = tmp_path_factory.mktemp("pte") / "model.pte"
    args = ["--format", "executorch", "--size", "64", "--max-size", "256"]
    assert main(["export", str(weights), str(out), *args, "--check-images", str(scenes / "images" / "val")]) == 0
    return out


@pytest.mark.slow
@pytest.mark.executorch
def test_pte_fp32_gives_the_model_labels_at_any_size(pte, weights, scenes):
    """The .pte through `Segmenter(PteForward(path))` labels images of several sizes as the PyTorch model does, in
    whole and slide mode; its logits equal the model's to 1e-4."""
    from segformer.export.runtimes import PteForward, load_runtime
    from segformer.model.loading import load_model

    model = load_model(weights)
    forward = load_runtime(pte)
    assert isinstance(forward, PteForward) and forward.config == model.config
    x = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        torch.testing.assert_close(forward(x), model(x), atol=1e-4, rtol=0)
    rng = np.random.default_rng(0)
    images = [*_images(scenes)[:2], rng.integers(0, 256, (90, 131, 3), dtype=np.uint8)]
    for options in (InferenceOptions(), InferenceOptions(mode="slide", crop=(64, 64), stride=(40, 40))):
        want = Segmenter(model, options).predict_arrays(images)
        got = Segmenter(forward, options).predict_arrays(images)
        assert all(np.mean(a == b) > 0.999 for a, b in zip(want, got, strict=True))
    with pytest.raises(ValueError, match="takes sizes"):
        forward(torch.zeros(1, 3, 64, 300))


@pytest.mark.slow
@pytest.mark.executorch
def test_predict_eval_and_app_accept_a_pte(pte, weights, scenes, tmp_path, capsys):
    from segformer.apps.app import ModelEntry, model_facts, segment
    from segformer.export.runtimes import load_runtime
    from segformer.model.loading import load_model

    out = tmp_path / "pred"
    assert main(["predict", str(pte), str(scenes / "images" / "val" / "00.png"), "--out", str(out)]) == 0
    labels = np.asarray(Image.open(out / "00.png"))
    model = load_model(weights)
    image = _images(scenes)[0]
    assert np.mean(labels == Segmenter(model, InferenceOptions())(image)) > 0.999
    report = tmp_path / "eval"
    args = ["eval", str(pte), "--dataset", "folder", "--data-root", str(scenes), "--out", str(report)]
    assert main([*args, "--no-progress"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    from segformer import evaluate
    from segformer.data import build_dataset

    expected = evaluate(model, build_dataset("folder", scenes, "val"), progress=False)
    assert metrics["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-3)
    forward = load_runtime(pte)
    entry = ModelEntry(forward, str(pte), np.zeros((7, 3), np.uint8))
    assert np.array_equal(segment(entry, image, InferenceOptions()), Segmenter(forward, InferenceOptions())(image))
    assert "in the exported file (.pte)" in model_facts(entry)


@pytest.mark.slow
@pytest.mark.executorch
def test_benchmark_times_exported_files_beside_the_model(pte, weights, tmp_path, capsys):
    """`segformer benchmark --exported`: a row per .onnx / .pte, run by its runtime on our input, whose logits match
    the PyTorch model's (a file of another model would not)."""
    from segformer.apps.benchmark import BenchmarkOptions, run_benchmark

    onnx = tmp_path / "model.onnx"
    assert main(["export", str(weights), str(onnx), "--size", "64"]) == 0
    options = BenchmarkOptions(size=(64, 96), repeats=1, warmup=0, onnx=False, memory=False, exported=(onnx, pte))
    rows = {row.name: row for row in run_benchmark(str(weights), options).rows}
    for name in ("ONNX Runtime model.onnx", "ExecuTorch model.pte"):
        assert rows[name].max_abs_diff < 1e-3 and rows[name].agreement > 0.999, name
    capsys.readouterr()
    args = ["benchmark", "--model", str(weights), "--size", "64x96", "--repeats", "1", "--warmup", "0", "--no-onnx"]
    assert main([*args, "--no-memory", "--exported", str(pte)]) == 0
    assert "ExecuTorch model.pte" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.executorch
def test_pte_int8_fixed_size_calibrated_gated_and_predicted(weights, scenes, tmp_path, capsys):
    """PT2E int8 with XNNPACK's quantizer, fixed to 64x64: calibrated on the images, checked on the labelled dataset
    (mIoU change), written with what stayed fp32 and why; predict runs it on 64x64 windows of a larger image (the
    size in its metadata) and the program refuses another size in one line."""
    out = tmp_path / "int8.pte"
    args = ["--format", "executorch", "--int8", "--calibrate", str(scenes / "images" / "val"), "--calib-count", "6"]
    args += ["--size", "64", "--fixed-size", "--min-agreement", "0.9"]
    args += ["--eval-dataset", "folder", "--eval-root", str(scenes)]
    assert main(["export", str(weights), str(out), *args]) == 0
    text = capsys.readouterr().out
    assert "ExecuTorch int8: kept in higher precision:" in text
    assert "layer_norm: " in text and "XNNPACK has no int8 LayerNorm" in text
    assert "int8: " in text and "conv2d" in text and "mIoU: float" in text and f"wrote {out}" in text
    from segformer.export.runtimes import load_runtime
    from segformer.model.loading import load_model

    forward = load_runtime(out)
    assert forward.metadata["int8"] is True and forward.fixed_size == (64, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = load_model(weights)(x)
    logits = forward(x)
    assert logits.shape == reference.shape and not torch.equal(logits, reference)  # quantised, close
    assert (logits - reference).abs().max() < 0.25 * reference.abs().max()
    with pytest.raises(ValueError, match="exported for 64x64 inputs only, got 64x96"):
        forward(torch.zeros(1, 3, 64, 96))
    image = np.random.default_rng(1).integers(0, 256, (90, 131, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    assert main(["predict", str(out), str(tmp_path / "big.png"), "--out", str(tmp_path / "pred")]) == 0
    assert "slide, original size, crop 64x64" in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "pred" / "big.png")).shape == (90, 131)
    bench = ["benchmark", "--model", str(weights), "--size", "64x96", "--no-onnx", "--no-memory", "--exported"]
    assert main([*bench, str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("a program fixed to 64x64; benchmark it with --size 64x64")  # after its progress lines
    assert err[-1].startswith("segformer benchmark: error: ") and sum("error" in line for line in err) == 1


def test_executorch_missing_says_what_to_install(weights, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_executorch(name, *args, **kwargs):
        if name == "executorch" or name.startswith("executorch."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_executorch)
    out = tmp_path / "m.pte"
    assert main(["export", str(weights), str(out), "--format", "executorch", "--size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'segformer[executorch]'" in err[0] and not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_segmenter_gives_the_eager_labels(weights, scenes):
    from segformer.model.loading import load_model
    from segformer.runtime import compile_unavailable

    if compile_unavailable("cpu"):
        pytest.skip(f"torch.compile cannot run here: {compile_unavailable('cpu')}")
    model = load_model(weights)
    options = InferenceOptions(scale=(96, 64))
    images = _images(scenes)[:3]
    compiled = Segmenter(model, options, compile=True)
    x = compiled.prepare(images).x  # the batch predict_arrays runs: one shape, compiled once
    with torch.no_grad():
        torch.testing.assert_close(compiled.forward(x), model(x), atol=1e-4, rtol=0)
    eager = Segmenter(model, options).predict_arrays(images)
    for a, b in zip(eager, compiled.predict_arrays(images), strict=True):
        assert np.array_equal(a, b)


def test_compile_unavailable_falls_back_in_one_line(weights, scenes, monkeypatch, caplog):
    import importlib

    from segformer.model.loading import load_model

    run_module = importlib.import_module("segformer.inference.run")  # the module, not the function it exports
    monkeypatch.setattr(run_module, "compile_unavailable", lambda device: "no C++ compiler (g++) for its CPU backend")
    model = load_model(weights)
    images = _images(scenes)[:2]
    with caplog.at_level(logging.WARNING, logger="segformer"):
        labels = Segmenter(model, InferenceOptions(), compile=True).predict_arrays(images)
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile is not available here (no C++ compiler (g++) for its CPU backend); running eagerly"
    ]
    for a, b in zip(Segmenter(model, InferenceOptions()).predict_arrays(images), labels, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="PyTorch models"):
        Segmenter(lambda x: x, InferenceOptions(), compile=True)


def test_train_compile_flag_compiles_the_training_net_or_says_why_not(monkeypatch, caplog):
    """`segformer train --compile` sets TrainConfig.compile; the loop wraps the net in torch.compile (compiled on its
    first step), or trains the plain net with one line where compile cannot run."""
    import argparse

    from segformer.cli import train as train_cli
    from segformer.runtime import compile_unavailable
    from segformer.training import loop

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.resolve_config(parser.parse_args(["--compile"])).compile is True
    assert train_cli.resolve_config(parser.parse_args([])).compile is False
    net = torch.nn.Linear(2, 2)
    if compile_unavailable("cpu") is None:
        compiled = loop._compiled(net, torch.device("cpu"), say=True)
        assert compiled is not net and compiled._orig_mod is net  # checkpoints keep saving the plain model
    monkeypatch.setattr(loop, "compile_unavailable", lambda device: "no C++ compiler (g++) for its CPU backend")
    with caplog.at_level(logging.WARNING, logger="segformer"):
        assert loop._compiled(net, torch.device("cpu"), say=True) is net
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile is not available here (no C++ compiler (g++) for its CPU backend); training eagerly"
    ]


# ---------------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_tensorrt_fp16_passes_the_gate(weights, scenes, tmp_path, capsys):
    pytest.importorskip("tensorrt")
    out = tmp_path / "m.engine"
    args = ["--format", "tensorrt", "--size", "64", "--check-images", str(scenes / "images" / "val")]
    assert main(["export", str(weights), str(out), *args, "--min-agreement", "0.995"]) == 0
    text = capsys.readouterr().out
    assert "TensorRT fp16: kept in higher precision:" in text and "NORMALIZATION" in text and out.is_file()


@pytest.mark.gpu
@needs_cuda
def test_compiled_segmenter_on_cuda_gives_the_eager_labels(weights, scenes):
    from segformer.model.loading import load_model

    model = load_model(weights).cuda()
    images = _images(scenes)[:3]
    options = InferenceOptions(scale=(96, 64))
    eager = Segmenter(model, options).predict_arrays(images)
    compiled = Segmenter(model, options, compile=True).predict_arrays(images)
    assert all(np.mean(a == b) > 0.999 for a, b in zip(eager, compiled, strict=True))


def test_gpu_benchmark_script_says_it_needs_cuda(capsys):
    """benchmarks/gpu.py (the GPU table, one script) parses its arguments and stops in one line without CUDA."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run python benchmarks/gpu.py itself")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_benchmark", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--repeats", "3", "--budget", "400"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["benchmarks/gpu.py: no CUDA device here; use --dry-run to check the script on the CPU"]
