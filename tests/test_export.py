"""ONNX export (dynamic sizes, pre/post-processing) checked in ONNX Runtime."""

from __future__ import annotations

import sys

import numpy as np
import onnx  # the onnx extra is in the dev extra that CI installs: a missing install fails here, loudly
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from segformer import MEAN, STD, create_model
from segformer.cli import main


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("b0", num_classes=5, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():  # BN statistics away from identity so the folded BN matters
        m.head.bn.running_mean.normal_()
        m.head.bn.running_var.uniform_(0.5, 2.0)
    return m


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.onnx
def test_logits_export_dynamic_sizes(model, tmp_path):
    from segformer.export import export_onnx

    report = export_onnx(model, tmp_path / "m.onnx", sample_size=(64, 64), check_sizes=((64, 64), (45, 97)))
    assert [c["size"] for c in report.checked] == [(64, 64), (45, 97)]
    assert all(c["max_abs_diff"] <= 1e-4 for c in report.checked)
    proto = onnx.load(str(report.path))
    assert report.opset >= 17
    assert _dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    # One more size, batch 3, never seen while exporting or checking.
    x = torch.randn(3, 3, 130, 77)
    got = _session(report.path).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == (3, 5, 33, 20)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.onnx
def test_onnxruntime_ops_export_fuses_attention_and_stays_exact(model, tmp_path):
    """--onnxruntime-ops: attention as com.microsoft MultiHeadAttention, the same logits at any size; the default
    graph holds standard ONNX operators only (other runtimes can read it)."""
    from segformer.export import export_onnx

    plain = export_onnx(model, tmp_path / "p.onnx", sample_size=(64, 64), check_sizes=((64, 64),))
    assert {n.domain for n in onnx.load(str(plain.path)).graph.node} <= {"", "ai.onnx"}
    report = export_onnx(
        model, tmp_path / "f.onnx", sample_size=(64, 64), check_sizes=((64, 64), (45, 97)), onnxruntime_ops=True
    )
    assert all(c["max_abs_diff"] <= 1e-4 for c in report.checked)
    fused = [n for n in onnx.load(str(report.path)).graph.node if n.domain == "com.microsoft"]
    assert [n.op_type for n in fused] == ["MultiHeadAttention"] * 4  # one block per stage
    x = torch.randn(2, 3, 130, 77)
    got = _session(report.path).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="torchscript"):
        export_onnx(model, tmp_path / "d.onnx", exporter="dynamo", onnxruntime_ops=True)


@pytest.mark.onnx
@pytest.mark.parametrize("onnxruntime_ops", [False, True])
def test_export_graph_keeps_onnxruntime_layouts(model, tmp_path, onnxruntime_ops):
    """What keeps the export fast, checked on the graph ONNX Runtime's optimiser makes of it: no Shape reads a conv's
    output (ONNX Runtime would reorder that whole map back to NCHW for it, even through a Transpose), every layout
    reorder writes channels-last tokens, and the decoder upsamples levels 2-4 with Resize on NHWC maps (no Transpose,
    Slice or band products in the head)."""
    from segformer.export import export_onnx

    path = export_onnx(
        model, tmp_path / "m.onnx", sample_size=(64, 64), check=False, onnxruntime_ops=onnxruntime_ops
    ).path
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    read = {producers[n.input[0]].op_type for n in graph.node if n.op_type == "Shape" and n.input[0] in producers}
    assert not read & {"Conv", "ReorderOutput", "Transpose"}
    reorders = [n for n in graph.node if n.op_type == "ReorderOutput"]  # only where ORT uses its blocked layout
    assert all(
        onnx.helper.get_attribute_value(a) == 1 for n in reorders for a in n.attribute if a.name == "channels_last"
    )
    head = [n.op_type for n in graph.node if "/head/" in n.name]
    products = [t for t in head if t in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")]
    assert head.count("Resize") == 3 and "Transpose" not in head
    assert len(products) == 5  # projections of levels 2-4 and 1 (with the sum and the ReLU), the classifier


@pytest.mark.onnx
def test_cli_export_with_pre_and_postprocess(model, tmp_path, capsys):
    folder = model.save_pretrained(tmp_path / "weights")
    out = tmp_path / "app.onnx"
    argv = ["export", str(folder), str(out), "--with-preprocess", "--with-postprocess", "--label-dtype", "uint8"]
    assert main([*argv, "--size", "64x96"]) == 0
    assert "labels equal" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert _dims(proto.graph.input[0]) == ["batch", "height", "width", 3]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in proto.metadata_props}
    assert "class_names" in meta and "segformer_config" in meta
    # Independent torch path: normalise, forward, upsample to the input size, argmax.
    image = np.random.default_rng(0).integers(0, 256, (2, 71, 83, 3), dtype=np.uint8)
    labels = _session(out).run(None, {"image": image})[0]
    x = (torch.from_numpy(image).permute(0, 3, 1, 2).float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD
    ).view(3, 1, 1)
    with torch.no_grad():
        expected = F.interpolate(model(x), size=(71, 83), mode="bilinear", align_corners=False).argmax(1)
    assert labels.dtype == np.uint8 and labels.shape == (2, 71, 83)
    assert np.mean(labels == expected.numpy()) > 0.999


@pytest.mark.onnx
def test_export_rejects_bad_options(model, tmp_path):
    from segformer.export import export_onnx

    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(model, tmp_path / "a.onnx", opset=16)
    with pytest.raises(ValueError, match="minimum"):
        export_onnx(model, tmp_path / "a.onnx", sample_size=(16, 16))
    assert not (tmp_path / "a.onnx").exists()


def test_export_without_onnx_says_what_to_install(model, tmp_path, monkeypatch):
    from segformer.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'segformer\[onnx\]'"):
        export_onnx(model, tmp_path / "a.onnx")


@pytest.mark.onnx
@pytest.mark.slow
def test_dynamo_exporter_dynamic_sizes(model, tmp_path):
    """The torch.export-based exporter gives the same graph semantics: any batch and size run in ONNX Runtime."""
    from segformer.export import export_onnx

    report = export_onnx(
        model, tmp_path / "d.onnx", exporter="dynamo", sample_size=(64, 64), check_sizes=((64, 64), (45, 97))
    )
    assert report.opset >= 18 and all(c["max_abs_diff"] <= 1e-4 for c in report.checked)
    x = torch.randn(3, 3, 99, 70)
    got = _session(report.path).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


@pytest.mark.onnx
@pytest.mark.parametrize(
    "options",
    [
        {"scale": (96, 64)},
        {"mode": "slide", "crop": (48, 48), "stride": (32, 32)},
        {"scale": (96, 64), "flip": True, "scales": (0.75, 1.0)},
    ],
    ids=["whole", "slide", "tta"],
)
def test_onnx_forward_through_the_spine_gives_the_model_labels(model, tmp_path, options):
    """A float ONNX export as `Segmenter(OnnxForward(path), options)` labels images as `Segmenter(model, options)`:
    the same prepare, test mode and finish around a forward that differs by ONNX Runtime's float rounding only."""
    from segformer.export import OnnxForward, export_onnx
    from segformer.inference import InferenceOptions, Segmenter

    path = export_onnx(model, tmp_path / "m.onnx", sample_size=(64, 64), check=False).path
    options = InferenceOptions(**options)
    forward = OnnxForward(path)
    assert forward.config == model.config  # read back from the file's metadata
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((70, 90, 3), (120, 61, 3), (64, 64, 3))]
    want = Segmenter(model, options).predict_arrays(images)
    got = Segmenter(forward, options).predict_arrays(images)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and np.mean(a == b) > 0.999  # a near-tie may flip under ORT's 1e-6 rounding


@pytest.mark.onnx
def test_onnx_forward_pixels_in_labels_out(model, tmp_path):
    """A graph with pre- and postprocessing as a forward: the spine's normalised input is turned back into uint8
    pixels, and the class ids it returns at the input size are resized to the image by nearest (`finish`); slide
    mode and TTA need logits and say so."""
    from segformer.export import OnnxForward, export_onnx
    from segformer.inference import InferenceOptions, Segmenter

    path = export_onnx(
        model, tmp_path / "app.onnx", sample_size=(64, 64), check=False, with_preprocess=True, with_postprocess=True
    ).path
    image = np.random.default_rng(1).integers(0, 256, (75, 101, 3), dtype=np.uint8)
    options = InferenceOptions(scale=(64, 48))  # the network sees 48x64, the labels come back at 75x101
    labels = Segmenter(OnnxForward(path), options)(image)
    # Independent path: normalise, resize to the input size, the model, bilinear to the input size, argmax, nearest
    # to the image.
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD
    ).view(3, 1, 1)
    x = F.interpolate(x, size=(48, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        small = F.interpolate(model(x), size=(48, 64), mode="bilinear", align_corners=False).argmax(1)
    expected = F.interpolate(small[:, None].float(), size=(75, 101), mode="nearest")[0, 0].long().numpy()
    assert labels.shape == (75, 101) and np.mean(labels == expected) > 0.99  # uint8 rounding of the input
    with pytest.raises(ValueError, match="outputs class ids"):
        Segmenter(OnnxForward(path), options.replace(flip=True))(image)
    with pytest.raises(ValueError, match="outputs class ids"):
        Segmenter(OnnxForward(path), InferenceOptions(mode="slide", crop=(48, 48), stride=(32, 32)))(image)
