"""The demo pipeline end to end at toy scale: the files it writes and that they load (not the accuracy)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from segformer.apps.demo import DemoConfig, run_demo
from segformer.cli import main

TINY = DemoConfig(
    train_images=4, val_images=2, size=64, crop=48, iters=2, batch_size=2, warmup_iters=1, eval_every=1, grid_images=2
)


def test_run_demo_writes_everything(tmp_path):
    from segformer import load_model
    from segformer.data.synth import CLASS_NAMES

    out = tmp_path / "demo"
    summary = run_demo(out, tmp_path / "data", replace(TINY, onnx=False))

    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["mIoU"] <= 1.0
    assert set(metrics["metrics"]["per_class"]) == set(CLASS_NAMES)
    assert metrics["config"]["iters"] == 2 and metrics["timings"]["total_s"] > 0
    assert summary["metrics"]["mIoU"] == pytest.approx(metrics["metrics"]["mIoU"])
    assert "onnx" not in summary["paths"]

    model = load_model(out / "model")
    assert model.config.class_names == CLASS_NAMES
    card = (out / "model" / "README.md").read_text()  # the model card: recipe, classes in the demo's colours
    assert "Trained with `segformer train`" in card and "| 1 | striped disk | `#" in card
    assert f"{100 * summary['metrics']['mIoU']:.2f}" in card and "first 50" not in card
    # The saved model is the trained one: it reproduces the demo's own evaluation.
    from segformer.data import build_dataset
    from segformer.evaluation import evaluate

    again = evaluate(model, build_dataset("folder", tmp_path / "data", "val"), progress=False)
    assert again["mIoU"] == pytest.approx(summary["metrics"]["mIoU"], abs=1e-6)

    grid = np.asarray(Image.open(out / "predictions.png"))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 3 * 64  # 2 rows x 3 columns of 64 px cells
    assert Image.open(out / "curves.png").size[0] > 100
    history = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("mIoU" in r for r in history) and any("loss" in r for r in history)

    # Re-running replaces the earlier run (no "already holds a checkpoint" refusal) and reuses the data.
    stamp = (tmp_path / "data" / "synth.json").stat().st_mtime_ns
    run_demo(out, tmp_path / "data", replace(TINY, onnx=False, eval_every=0))
    assert (tmp_path / "data" / "synth.json").stat().st_mtime_ns == stamp
    assert (out / "model" / "model.safetensors").is_file()


def test_demo_refuses_foreign_train_folder(tmp_path):
    (tmp_path / "demo" / "train").mkdir(parents=True)
    (tmp_path / "demo" / "train" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a training run"):
        run_demo(tmp_path / "demo", tmp_path / "data", replace(TINY, onnx=False))
    assert (tmp_path / "demo" / "train" / "notes.txt").read_text() == "mine"


def test_demo_config_validation():
    with pytest.raises(ValueError, match="iters"):
        DemoConfig(iters=0)
    with pytest.raises(ValueError, match="size"):
        DemoConfig(size=16)


@pytest.mark.onnx
def test_cli_demo_with_onnx(tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--data", str(tmp_path / "data"), "--train-images", "2", "--val-images", "1"]
    argv += ["--size", "48", "--iters", "1", "--batch-size", "2", "--eval-every", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "striped disk" in printed and str(out / "predictions.png") in printed
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (1, 7, 16, 16)
    from segformer import load_model

    with torch.no_grad():
        expected = load_model(out / "model").eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-3)


def test_cli_demo_bad_argument(capsys):
    assert main(["demo", "--iters", "0"]) == 2
    assert "iters" in capsys.readouterr().err
