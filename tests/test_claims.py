"""The paper's claims, checkable on your own data (issue 23): the positional-encoding ablation of Mix-FFN and the
resolution sweep, effective receptive fields, and corruption robustness."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import NAMES, TINY
from reference import hf_model
from segformer import InferenceOptions, SegFormerConfig, create_model, evaluate, load_model
from segformer.analysis.erf import effective_receptive_fields, input_gradient, mass_radius, save_erf
from segformer.cli import main
from segformer.data import build_dataset
from segformer.evaluation.robustness import (
    FAMILIES,
    CorruptedDataset,
    corrupt_image,
    corruption_module,
    evaluate_robustness,
    image_seed,
    parse_corruptions,
    parse_severities,
)
from segformer.evaluation.sweep import resolution_sweep, scale_points, window_points
from segformer.model.convert import from_ours
from segformer.model.layers import EXPORT, to_map
from test_eval_predict_cli import write_folder_dataset

PE = (64, 64)  # pos_embed_size of the ablation models here


def pe_model(**extra) -> torch.nn.Module:
    model = create_model("b0", num_classes=3, class_names=NAMES, pos_embed_size=PE, **TINY, **extra).eval()
    with torch.no_grad():  # encodings far from their small init, so that a wrong placement cannot hide
        for stage in model.encoder.stages:
            stage.pos_embed.weight.normal_()
    return model


# ------------------------------------------------------------------------------------ the ablation variant


def test_the_ablation_is_off_by_default_and_the_paper_model_unchanged():
    config = SegFormerConfig.from_name("b0")
    assert config.pos_embed_size is None
    keys = create_model("b0", **TINY).state_dict()
    assert not any("pos_embed" in k for k in keys) and "encoder.stages.0.blocks.0.ffn.dwconv.weight" in keys


def test_config_round_trips_to_json_and_checks_the_size():
    config = SegFormerConfig.from_name("b0", pos_embed_size=(64, 96))
    again = SegFormerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.pos_embed_size == (64, 96)
    with pytest.raises(ValueError, match="pos_embed_size"):
        SegFormerConfig.from_name("b0", pos_embed_size=(64, 0))


def transformers_with_pe(ours: torch.nn.Module) -> torch.nn.Module:
    """transformers' SegFormer made into the ablation by hand: Mix-FFN's depthwise conv passes its input through,
    and a hook adds our encodings, resized bilinearly, to each patch embedding's output; our other weights."""
    hf = hf_model(ours.config)  # transformers 5.x: modules named as the `hf5` layout
    for stage in hf.segformer.stages:
        for layer in stage.blocks:
            layer.mlp.dwconv = type("PassThrough", (torch.nn.Module,), {"forward": lambda self, x, h, w: x})()
    state = from_ours(ours.state_dict(), "hf5")
    encodings = [state.pop(f"segformer.stages.{s}.pos_embeddings.weight") for s in range(4)]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected

    def add(encoding):
        def hook(module, inputs, output):
            tokens, h, w = output
            grid = F.interpolate(encoding, size=(h, w), mode="bilinear", align_corners=False)
            return tokens + grid.flatten(2).transpose(1, 2), h, w

        return hook

    for stage, encoding in zip(hf.segformer.stages, encodings, strict=True):
        stage.patch_embeddings.register_forward_hook(add(encoding))
    return hf.eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])  # the encodings' own grid, and resized
def test_ablation_matches_transformers_with_the_conv_removed_and_encodings_added(size):
    ours = pe_model()
    hf = transformers_with_pe(ours)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        ours.head.fold = False
        got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_ablation_runs_the_same_on_every_compute_path():
    model = pe_model()
    x = torch.randn(1, 3, 80, 96)
    with torch.enable_grad():
        plain = model(x).detach()
    with torch.inference_mode():
        fast = model(x)
    torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the ONNX-export graph, run eagerly stage by stage
        a, b = x, x
        for stage in model.encoder.stages:
            a, b = stage(a), stage(b, EXPORT)
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_encodings_are_used_as_learned_at_their_own_size():
    stage = pe_model().encoder.stages[0]
    grid = stage.pos_embed.weight.shape[2:]
    assert tuple(grid) == (16, 16)  # ceil(64 / 4)
    tokens = stage.pos_embed(grid)
    torch.testing.assert_close(tokens, stage.pos_embed.weight.flatten(2).transpose(1, 2), atol=0, rtol=0)


def test_ablation_saves_and_loads_with_its_encodings(tmp_path):
    model = pe_model()
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["segformer_pos_embed_size"] == list(PE)
    again = load_model(tmp_path / "m")
    assert again.config.pos_embed_size == PE
    x = torch.randn(1, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)


# ------------------------------------------------------------------------------------ resolution sweep


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data"), NAMES)


def test_sweep_points_evaluate_as_their_options_say(weights, data):
    model, dataset = load_model(weights), build_dataset("folder", data, "val")
    base = InferenceOptions(scale=(64, 48), batch_size=2)
    points = scale_points(base, [1.0, 1.5])
    assert [p.label for p in points] == ["1x", "1.5x"] and points[1].options.scales == (1.5,)
    rows = resolution_sweep(model, dataset, points, progress=False)
    assert rows[0]["mIoU"] == evaluate(model, dataset, base, progress=False)["mIoU"]
    bigger = evaluate(model, dataset, base.replace(scale=(96, 72)), progress=False)["mIoU"]
    assert rows[1]["mIoU"] == pytest.approx(bigger, abs=1e-12)
    # A window the size of the image is the whole image (slide with one window against whole; the first two
    # images are 48x64).
    rows = resolution_sweep(
        model, dataset, window_points(InferenceOptions(), [(48, 64)]), progress=False, max_samples=2
    )
    whole = evaluate(model, dataset, progress=False, max_samples=2)["mIoU"]
    assert rows[0]["mIoU"] == pytest.approx(whole, abs=1e-12)
    smaller = resolution_sweep(model, dataset, window_points(InferenceOptions(), [(32, 32)]), progress=False)
    assert smaller[0]["options"]["crop"] == [32, 32] and smaller[0]["mIoU"] != rows[0]["mIoU"]


def test_eval_cli_sweep_writes_the_curve(weights, data, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["eval", str(weights), "--dataset", "folder", "--data-root", str(data), "--out", str(out)]
    assert main([*argv, "--sweep-scales", "0.75,1,2", "--num-workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["0.75x", "1x", "2x"]
    assert rows[1]["mIoU"] == pytest.approx(evaluate(load_model(weights), build_dataset("folder", data, "val"),
                                                     progress=False)["mIoU"], abs=1e-12)  # fmt: skip
    assert f"{100 * rows[2]['mIoU']:6.2f}" in printed
    with Image.open(out / "sweep.png") as png:
        assert png.size[0] > 100
    assert main([*argv, "--sweep-sizes", "32,48", "--corruption", "fog", "--no-progress"]) == 2
    assert "separate evaluations" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ effective receptive fields


def support(erf: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(erf)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def window(erf: np.ndarray, i: int, j: int, half: int) -> np.ndarray:
    """The mask of input pixels within `half` of (i, j): a receptive field by construction, clipped to the image."""
    mask = np.zeros(erf.shape, bool)
    mask[max(i - half, 0) : i + half + 1, max(j - half, 0) : j + half + 1] = True
    return mask


@pytest.mark.parametrize("point", ["centre", "corner"])
def test_erf_of_the_patch_embeddings_is_exactly_their_receptive_field(point):
    stages = create_model("b0", **TINY).eval().encoder.stages
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    tokens, hw = stages[0].patch_embed(x)
    first = to_map(tokens, hw)  # (B, C, 16, 16): the stride-4 7x7 conv and its LayerNorm
    i, j = (8, 8) if point == "centre" else (0, 0)
    erf = input_gradient(first, x, point, retain_graph=True).sum(0).numpy()
    assert np.array_equal(erf > 0, window(erf, 4 * i, 4 * j, 3))  # input rows 4i-3 .. 4i+3
    second = to_map(*stages[1].patch_embed(first))  # then the stride-2 3x3 conv: 4 * (2i +- 1) +- 3
    i, j = (4, 4) if point == "centre" else (0, 0)
    erf = input_gradient(second, x, point).sum(0).numpy()
    assert np.array_equal(erf > 0, window(erf, 8 * i, 8 * j, 7))


def test_erf_of_a_conv_is_its_weights():
    conv = torch.nn.Conv2d(3, 1, 5, padding=2)
    with torch.no_grad():
        conv.bias.fill_(100.0)  # the output stays positive, so the ReLU passes the gradient
    x = torch.rand(1, 3, 21, 21, requires_grad=True)
    erf = input_gradient(conv(x), x, "centre")[0]
    expected = torch.zeros(21, 21)
    expected[8:13, 8:13] = conv.weight[0].abs().sum(0).detach()
    torch.testing.assert_close(erf, expected, atol=0, rtol=0)


def test_model_erfs_are_image_averages_and_stage1_already_sees_the_whole_image(tmp_path):
    model = create_model("b0", num_classes=3, **TINY)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(3)]
    size = (64, 64)
    both = effective_receptive_fields(model, images, size, points=("centre", "corner"), batch_size=2)
    assert set(both) == {"stage1", "stage2", "stage3", "stage4", "head"}
    alone = [effective_receptive_fields(model, [im], size, ("stage1",)) for im in images]
    expected = np.mean([a["stage1"]["centre"] for a in alone], axis=0)
    np.testing.assert_allclose(both["stage1"]["centre"], expected, rtol=1e-5, atol=1e-12)
    for target in ("stage1", "head"):  # global attention (spatial reduction): every pixel moves the centre
        assert (both[target]["centre"] > 0).all() and both[target]["centre"].shape == size
    assert mass_radius(both["stage1"]["centre"], (32, 32), 0.9) >= mass_radius(both["stage1"]["centre"], (32, 32))
    stats = save_erf(both, tmp_path / "erf", images=3)
    assert set(stats["radius"]) == {f"{t}/{p}" for t in both for p in ("centre", "corner")}
    arrays = np.load(tmp_path / "erf" / "erf.npz")
    np.testing.assert_array_equal(arrays["head_corner"], both["head"]["corner"])
    assert (tmp_path / "erf" / "erf.png").is_file() and (tmp_path / "erf" / "erf_stage4_corner.png").is_file()


def test_erf_cli(weights, data, tmp_path, capsys):
    images = data / "images" / "val"
    out = tmp_path / "erf"
    assert main(["erf", str(weights), str(images), "--out", str(out), "--size", "64", "--points", "centre,corner"]) == 0
    assert "stage1/centre" in capsys.readouterr().out
    assert json.loads((out / "erf.json").read_text())["images"] == 3
    assert main(["erf", str(weights), str(images), "--out", str(out), "--targets", "stage9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage9" in err[0] and "stage1, stage2" in err[0]


# ------------------------------------------------------------------------------------ corruptions


SMALL = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)


@pytest.fixture
def corruptions():
    """The robustness extra (the dev extra installs it: a missing module fails). Skipped, with the reason, only where
    opencv-python cannot load its system libraries, as the browser tests skip without Chromium."""
    try:
        corruption_module()
    except RuntimeError as e:
        if "apt-get install" not in str(e):
            raise
        pytest.skip(str(e))


def test_every_corruption_runs_at_every_severity_on_a_small_image(corruptions):
    for name in FAMILIES:
        for severity in range(1, 6):
            out = corrupt_image(SMALL, name, severity, seed=1)
            assert out.shape == SMALL.shape and out.dtype == np.uint8, (name, severity)
            assert not np.array_equal(out, SMALL), (name, severity)


def test_the_same_seed_gives_the_same_images_and_numpy_is_left_alone(corruptions):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for name in FAMILIES:
        a, b = corrupt_image(SMALL, name, 3, seed=7), corrupt_image(SMALL, name, 3, seed=7)
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert np.array_equal(np.random.get_state()[1], before)
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "snow", "spatter"):  # random ones
        assert not np.array_equal(corrupt_image(SMALL, name, 3, seed=7), corrupt_image(SMALL, name, 3, seed=8))
    assert image_seed(0, 1, "fog", 2) == image_seed(0, 1, "fog", 2) != image_seed(0, 2, "fog", 2)


def test_bad_names_and_severities_list_the_valid_ones(weights, data, capsys):
    with pytest.raises(ValueError, match="unknown corruption 'fgo'; valid: all, motion_blur, .*, frost$"):
        parse_corruptions("fog,fgo")
    with pytest.raises(ValueError, match="severity '6' is out of range; valid: all, 1, 2, 3, 4, 5$"):
        parse_severities("6")
    assert parse_severities("all") == (1, 2, 3, 4, 5) and len(parse_corruptions("all")) == 16
    argv = ["eval", str(weights), "--dataset", "folder", "--data-root", str(data), "--no-progress"]
    for flags, expected in ((["--corruption", "rain"], "valid: all, motion_blur"), (["--corruption", "fog",
                            "--severity", "0"], "valid: all, 1, 2, 3, 4, 5")):  # fmt: skip
        assert main([*argv, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0]


def test_corruption_without_the_extra_names_it(weights, data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # import fails as if it were not installed
    argv = ["eval", str(weights), "--dataset", "folder", "--data-root", str(data), "--corruption", "fog"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the robustness extra: pip install 'segformer[robustness]'" in err[0]


def test_opencv_without_its_system_libraries_says_what_to_install(monkeypatch):
    class NoLibGL:  # what importing opencv-python looks like on a minimal Linux
        def find_spec(self, name, path=None, target=None):
            if name == "cv2":
                raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")

    for name in [m for m in sys.modules if m == "cv2" or m.startswith(("cv2.", "imagecorruptions"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoLibGL(), *sys.meta_path])
    with pytest.raises(RuntimeError, match=r"libGL.so.1.*apt-get install libgl1 libglib2.0-0$"):
        corruption_module()


class Listed:
    """A dataset of given arrays: the independent path to evaluate corrupted images made by hand."""

    def __init__(self, samples, names):
        self.samples_, self.class_names = samples, names

    def __len__(self):
        return len(self.samples_)

    def load(self, i):
        return self.samples_[i]


def test_robustness_evaluates_the_corrupted_images(weights, data, corruptions):
    model, dataset = load_model(weights), build_dataset("folder", data, "val")
    options = InferenceOptions(batch_size=2)
    result = evaluate_robustness(model, dataset, options, ("fog", "shot_noise"), (1, 4), seed=5, progress=False)
    for name in ("fog", "shot_noise"):
        for severity in (1, 4):
            by_hand = []
            for i in range(len(dataset)):
                image, mask, stem = dataset.load(i)
                by_hand.append((corrupt_image(image, name, severity, image_seed(5, i, name, severity)), mask, stem))
            expected = evaluate(model, Listed(by_hand, dataset.class_names), options, progress=False)["mIoU"]
            assert result["table"][name][severity] == expected
    assert result["clean"] == evaluate(model, dataset, options, progress=False)["mIoU"]
    assert result["mean"]["fog"] == pytest.approx(np.mean(list(result["table"]["fog"].values())))
    assert result["families"]["weather"] == result["mean"]["fog"]
    assert result["relative"]["fog"] == pytest.approx(result["mean"]["fog"] / result["clean"])
    wrapped = CorruptedDataset(dataset, "fog", 1, seed=5)
    assert wrapped.class_names == dataset.class_names and len(wrapped) == len(dataset)


def robustness_argv(weights, data, out):
    return ["eval", str(weights), "--dataset", "folder", "--data-root", str(data), "--out", str(out),
            "--corruption", "gaussian_noise,frost", "--severity", "1,3", "--no-progress"]  # fmt: skip


def test_eval_cli_robustness_table_and_heat_map(weights, data, tmp_path, capsys, corruptions):
    out = tmp_path / "rob"
    assert main([*robustness_argv(weights, data, out), "--num-workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "gaussian_noise" in printed and "mean weather" in printed
    saved = json.loads((out / "robustness.json").read_text())
    assert set(saved["table"]) == {"gaussian_noise", "frost"} and set(saved["table"]["frost"]) == {"1", "3"}
    with Image.open(out / "robustness.png") as png:
        assert png.size[0] > 100
    again = tmp_path / "again"  # the same seed, read by worker processes or not: the same numbers
    assert main([*robustness_argv(weights, data, again), "--num-workers", "0"]) == 0
    assert json.loads((again / "robustness.json").read_text())["table"] == saved["table"]


@pytest.mark.slow
def test_robustness_under_torchrun_equals_one_process(weights, data, tmp_path, corruptions):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*robustness_argv(weights, data, one), "--num-workers", "0"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launch, "-m", "segformer", *robustness_argv(weights, data, two), "--num-workers", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("mean weather") == 1  # rank 0 reports
    first, second = (json.loads((p / "robustness.json").read_text()) for p in (one, two))
    assert second["table"] == first["table"] and second["clean"] == first["clean"]
