"""INT8 export: the accuracy gate writes a checked model or refuses (nothing half-written), and bad input fails in
one clear line."""

from __future__ import annotations

import builtins
import json

import numpy as np
import onnx  # in the dev extra: a missing install fails here, loudly
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import write_scenes
from segformer import create_model
from segformer.cli import main
from segformer.data.synth import CLASS_NAMES

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("b0", num_classes=len(CLASS_NAMES), depths=(1, 1, 1, 1)).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A labelled folder dataset of synthetic scenes: ROOT/images/val/*.png, ROOT/masks/val/*.png."""
    return write_scenes(tmp_path_factory.mktemp("scenes"), 10)


def _int8(args, weights, out, calib):
    return main(["export", str(weights), str(out), "--int8", "--calibrate", str(calib), "--size", "64", *args])


def test_node_groups_find_the_segformer_structure(tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from segformer.export import export_onnx
    from segformer.export.graph import node_groups, quantization_plan, unfuse_gemm
    from segformer.export.int8 import DEFAULT_KEEP_FLOAT

    model = create_model("b0", num_classes=3, depths=(1, 1, 1, 1)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", sample_size=(64, 64), check=False).path
    proto = onnx.load(str(path))
    groups = node_groups(proto)
    blocks, stages = 4, 4
    assert len(groups["softmax"]) == blocks
    assert len(groups["layernorm"]) == stages * 2 + blocks * 2 + 3  # patch-embed + stage norms, 2/block, sr norms
    assert len(groups["first_conv"]) == len(groups["classifier"]) == 1
    classifier = next(n for n in proto.graph.node if n.name == groups["classifier"][0])
    assert classifier.op_type == "MatMul" and "/head/" in classifier.name
    reshape = next(n for n in proto.graph.node if classifier.output[0] in n.input)  # to (B, K, H, W), then + bias
    bias = next(n for n in proto.graph.node if reshape.output[0] in n.input)
    assert (reshape.op_type, bias.op_type, bias.output[0]) == ("Reshape", "Add", proto.graph.output[0].name)
    assert "stages.0/patch_embed" in groups["first_conv"][0]
    assert len(groups["gelu"]) == 5 * blocks  # Div, Erf, Add, Mul, Mul
    assert len(groups["attention"]) == 2 * blocks and all("/blocks.0/MatMul" in n for n in groups["attention"])
    # levels 2-4, each by a Resize
    upsampling = [n for n in proto.graph.node if n.name in set(groups["upsampling"])]
    assert len(upsampling) == stages - 1 and all(n.op_type == "Resize" and "/head/" in n.name for n in upsampling)
    weights = [n for n in proto.graph.node if n.name in set(groups["weights"])]
    # per block: q, k, v, proj Gemms, fc1, dwconv and fc2 Convs, sr Conv (stages 1-3); patch embeds 2-4; head: 4;
    # with one head (stage 1) proj is folded into v
    assert len(weights) == blocks * 7 - 1 + 3 + 3 + 4
    assert {n.op_type for n in weights} == {"Conv", "Gemm", "MatMul"}
    # as `quantize_onnx` does: ONNX Runtime's constant folding (the head's folded weights), then MatMul + Add
    quant_pre_process(str(path), str(tmp_path / "prepared.onnx"), skip_symbolic_shape=True)
    proto = onnx.load(str(tmp_path / "prepared.onnx"))
    assert unfuse_gemm(proto) == sum(n.op_type == "Gemm" for n in weights)
    groups = node_groups(proto)
    assert [len(groups[g]) for g in ("first_conv", "classifier", "attention", "upsampling")] == [1, 1, 8, 3]
    assert {n.op_type for n in proto.graph.node if n.name in set(groups["weights"])} == {"Conv", "MatMul"}
    op_types, exclude, kept = quantization_plan(proto, DEFAULT_KEEP_FLOAT)
    assert op_types == ["Conv", "MatMul", "Resize"]
    assert set(exclude) == {n for g in DEFAULT_KEEP_FLOAT for n in groups[g]}
    assert quantization_plan(proto, ())[0] is None  # everything: ONNX Runtime's whole registry


def test_int8_cli_writes_a_checked_model(weights, scenes, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    args = ["--calib-count", "6", "--min-agreement", "0.95", "--eval-dataset", "folder", "--eval-root", str(scenes)]
    assert _int8(args, weights, out, scenes / "images" / "val") == 0
    text = capsys.readouterr().out
    assert "pixel agreement with float" in text and "mIoU: float" in text and f"wrote {out}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no temporary left behind
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Gelu"} <= ops and "Erf" not in ops  # GELUs fused, kept float
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(producers.get(n.input[0]) != "DequantizeLinear" for n in proto.graph.node if n.op_type == "Shape")
    meta = {p.key: p.value for p in proto.metadata_props}
    info = json.loads(meta["segformer_int8"])
    assert info["agreement"] >= 0.95 and info["calibration_images"] == 6 and info["int8_miou"] is not None
    assert "segformer_config" in meta  # the float export's metadata is kept
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixel_values": np.random.randn(1, 3, 40, 72).astype(np.float32)})[0]
    assert logits.shape == (1, len(CLASS_NAMES), 10, 18)


def test_int8_app_graph_uint8_in_labels_out(weights, scenes, tmp_path, capsys):
    out = tmp_path / "app.onnx"
    args = ["--with-preprocess", "--with-postprocess", "--label-dtype", "uint8", "--min-agreement", "0.95"]
    assert _int8([*args, "--calib-count", "6"], weights, out, scenes / "images" / "val") == 0
    assert "held-out calibration images" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"image": np.zeros((1, 48, 80, 3), np.uint8)})[0]
    assert labels.shape == (1, 48, 80) and labels.dtype == np.uint8


def test_gate_refuses_a_bad_quantisation(weights, scenes, tmp_path, capsys):
    """Quantising everything, LayerNorm and Softmax included, wrecks the labels: refused, exit 1, nothing written,
    and a file already at the path is left alone."""
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous")
    assert _int8(["--keep-float", "none", "--calib-count", "6"], weights, out, scenes / "images" / "val") == 1
    captured = capsys.readouterr()
    assert "refused" in captured.err and "below the required 99.00%" in captured.err
    assert "pixel agreement with float" in captured.out
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_gate_library_raises_with_the_report(weights, scenes, tmp_path):
    from segformer.export.int8 import QuantizationRejected, QuantizeOptions, export_int8
    from segformer.model.loading import load_model

    with pytest.raises(QuantizationRejected) as info:
        export_int8(
            load_model(weights),
            tmp_path / "x.onnx",
            scenes / "images" / "val",
            calib_count=2,
            check_count=4,
            size=(64, 64),
            options=QuantizeOptions(keep_float=()),
        )
    report = info.value.report
    assert report.path is None and not report.passed and report.check_images == 4
    assert report.agreement < report.min_agreement  # refused for its agreement (about 97% on this graph)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "calibration images: no images"),
        ("text-only", "calibration images: no images"),
        ("missing", "no such file or folder"),
        ("one-image", "at least 2 are needed"),
        ("unreadable", "none of the 3 calibration files could be read (first: "),
    ],
)
def test_bad_calibration_folders(weights, tmp_path, capsys, setup, message):
    calib = tmp_path / "calib"
    if setup != "missing":
        calib.mkdir()
    if setup == "text-only":
        (calib / "notes.txt").write_text("not an image")
    elif setup == "one-image":
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(calib / "a.png")
    elif setup == "unreadable":
        for name in ("a.png", "b.jpg", "c.png", "d.png"):
            (calib / name).write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out.onnx"
    assert _int8([], weights, out, calib) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("segformer export: error:")
    assert not out.exists()


def test_int8_without_onnxruntime(weights, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    out = tmp_path / "out.onnx"
    assert _int8([], weights, out, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "segformer export: error: --int8 needs onnxruntime: pip install 'segformer[onnx]' (or onnx onnxruntime)"
    assert err == [expected]
    assert not out.exists()


def test_int8_flags_need_int8(weights, tmp_path, capsys):
    assert main(["export", str(weights), str(tmp_path / "o.onnx"), "--calibrate", str(tmp_path)]) == 2
    assert "--calibrate only applies with --int8" in capsys.readouterr().err
    assert main(["export", str(weights), str(tmp_path / "o.onnx"), "--int8"]) == 2
    assert "--int8 needs --calibrate IMAGES" in capsys.readouterr().err
