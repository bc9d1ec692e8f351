"""More than three channels: a 4-band TIFF dataset trains (statistics computed and saved with the model),
evaluates, predicts without channel flags and exports; .npy images; band layouts; one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile  # the multiband extra (in dev, so CI runs these tests)
import torch
from PIL import Image

import segformer
from conftest import tiny_model_file
from segformer.cli import main
from segformer.imageio import ChannelMismatchError, read_bands, read_image
from segformer.inference import Segmenter
from test_train import synthetic_pair


def four_band(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint16 (H, W, 4): RGB scaled to 0..65535 plus a near-infrared band that is bright on the disc (class 1)."""
    rgb, mask = synthetic_pair(rng)
    nir = np.where(mask == 1, 40000, 9000) + rng.integers(0, 3000, mask.shape)
    return np.dstack([rgb.astype(np.uint16) * 257, nir.astype(np.uint16)]), mask


def make_multiband_folder(root: Path, suffix: str = ".tif", n_train: int = 6, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = four_band(rng)
            path = root / "images" / split / f"{i:03d}{suffix}"
            if suffix == ".npy":
                np.save(path, image)
            else:
                tifffile.imwrite(path, image, photometric="minisblack")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\ndisc\nband\n")
    return root


def train_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--dataset", "folder", "--data-root", str(data), "--out", str(out),
        "--crop", "64", "--scale", "80x72", "--batch-size", "2", "--num-workers", "0", "--warmup-iters", "0",
        "--lr", "1e-3", "--log-every", "1", "--eval-every", "0", "--iters", "2", *extra,
    ]  # fmt: skip


def test_band_layouts_and_channel_checks(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60000, (20, 30, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "hwc.tif", image, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(image, -1, 0), photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "naive.tif", image)  # tifffile writes (H, W, 5) as H pages of (W, 5)
    np.save(tmp_path / "chw.npy", np.moveaxis(image, -1, 0).astype(np.float32))
    for name in ("hwc.tif", "chw.tif", "naive.tif", "chw.npy"):
        got = read_image(tmp_path / name, 5)
        assert got.shape == (20, 30, 5) and np.array_equal(got, image), name
        assert read_bands(tmp_path / name).shape == (20, 30, 5), name
    with pytest.raises(ChannelMismatchError, match="has 5 bands but 4 channels are expected"):
        read_image(tmp_path / "hwc.tif", 4)
    # A 4-band TIFF (tifffile marks the 4th band as alpha) is not silently read as RGBA in an RGB run.
    tifffile.imwrite(tmp_path / "rgbn.tif", image[:, :, :4])
    with pytest.raises(ChannelMismatchError, match="has 4 bands but 3 channels"):
        read_image(tmp_path / "rgbn.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", (image[:, :, :3] >> 8).astype(np.uint8))
    assert read_image(tmp_path / "rgb.tif").shape == (20, 30, 3)  # plain RGB TIFFs read as before
    Image.fromarray((image[:, :, :3] >> 8).astype(np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(ChannelMismatchError, match="must be multi-band TIFF or .npy"):
        read_image(tmp_path / "photo.png", 4)


@pytest.mark.onnx
def test_four_band_tiff_dataset_trains_evaluates_predicts_and_exports(tmp_path, capsys, caplog):
    data = make_multiband_folder(tmp_path / "data")
    model_file = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    assert main(train_args(data, run, model_file, "--in-channels", "4")) == 0

    # The statistics were computed over the training images and travel with the model.
    train_images = np.concatenate(
        [read_image(p, 4).reshape(-1, 4).astype(np.float64) for p in sorted((data / "images" / "train").iterdir())]
    )
    model = segformer.load_model(run / "final")
    assert model.config.in_channels == 4
    assert np.allclose(model.config.mean, train_images.mean(0), rtol=1e-9)
    assert np.allclose(model.config.std, train_images.std(0), rtol=1e-9)
    hub_config = json.loads((run / "final" / "config.json").read_text())
    assert hub_config["num_channels"] == 4 and len(hub_config["segformer_mean"]) == 4
    assert segformer.load_model(run / "last.pt").config.mean == model.config.mean

    capsys.readouterr()
    assert main(["eval", str(run / "final"), "--dataset", "folder", "--data-root", str(data), "--out",
                 str(tmp_path / "eval"), "--num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert "mIoU" in capsys.readouterr().out

    # Predict: no channel flags; the same labels as normalising by hand with the saved statistics.
    image_path = data / "images" / "val" / "000.tif"
    assert main(["predict", str(run / "final"), str(data / "images" / "val"), "--out", str(tmp_path / "pred"),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    labels = np.asarray(Image.open(tmp_path / "pred" / "000.png"))
    x = torch.from_numpy(read_image(image_path, 4).astype(np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(model.config.mean).view(4, 1, 1)) / torch.tensor(model.config.std).view(4, 1, 1)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model.eval()(x[None]), size=x.shape[-2:], mode="bilinear")
    assert np.array_equal(labels, logits.argmax(1)[0].numpy())
    assert (tmp_path / "pred" / "000_overlay.jpg").is_file()
    assert np.array_equal(Segmenter(model)(image_path), labels)

    for extra in ([], ["--with-preprocess", "--with-postprocess"]):
        out = tmp_path / f"model{len(extra)}.onnx"
        assert main(["export", str(run / "final"), str(out), "--size", "64", *extra]) == 0
        assert "onnxruntime at batch" in capsys.readouterr().out
    from segformer.export import ort_session

    session = ort_session(tmp_path / "model2.onnx")
    raw = read_image(image_path, 4).astype(np.float32)[None]
    assert np.mean(session.run(None, {"image": raw})[0][0] == labels) > 0.999  # float32 raw bands in, labels out

    # The gate checks on the user's own bands: 4-band TIFFs as check images, and as INT8 calibration images (read as
    # the model reads them, shrunk in float32); an RGB image among them is skipped with its reason.
    train_dir = data / "images" / "train"
    check = ["--check-images", str(train_dir), "--size", "32"]
    assert main(["export", str(run / "final"), str(tmp_path / "checked.onnx"), *check]) == 0
    assert f"checked on {len(list(train_dir.glob('*.tif')))} held-out images" in capsys.readouterr().out
    Image.new("RGB", (40, 40)).save(train_dir / "rgb.png")
    calibrate = ["--format", "int8", "--calibrate", str(train_dir), "--size", "32", "--min-agreement", "0"]
    assert main(["export", str(run / "final"), str(tmp_path / "int8.onnx"), *calibrate]) == 0
    assert "held-out" in capsys.readouterr().out
    assert "rgb.png: a .png image holds RGB, not 4 channels" in caplog.text


def test_npy_images_train_with_given_statistics(tmp_path):
    data = make_multiband_folder(tmp_path / "data", suffix=".npy", n_train=2, n_val=0)
    model_file = tiny_model_file(tmp_path / "tiny.json")
    stats = ("--mean", "30000,30000,30000,20000", "--std", "18000,18000,18000,12000")
    assert main(train_args(data, tmp_path / "run", model_file, "--in-channels", "4", *stats)) == 0
    model = segformer.load_model(tmp_path / "run" / "final")
    assert model.config.mean == (30000.0, 30000.0, 30000.0, 20000.0) and model.config.std[3] == 12000.0


def test_pretrained_rgb_encoder_is_adapted_to_four_channels(tmp_path):
    torch.manual_seed(3)
    source = segformer.create_model("b0", num_classes=3)
    folder = source.save_pretrained(tmp_path / "rgb")
    model = segformer.create_model("b0", num_classes=3, in_channels=4, pretrained=folder)
    weight, rgb = model.encoder.stages[0].patch_embed.proj.weight, source.encoder.stages[0].patch_embed.proj.weight
    assert (
        weight.shape[1] == 4
        and torch.allclose(weight[:, :3], rgb * 0.75)
        and torch.allclose(weight[:, 3], rgb[:, 0] * 0.75)
    )


def test_channel_mismatches_fail_with_one_clear_line(tmp_path, capsys):
    data = make_multiband_folder(tmp_path / "data", n_train=2, n_val=0)
    model_file = tiny_model_file(tmp_path / "tiny.json")

    def fails(args: list[str], *expected: str) -> None:
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("segformer train: error:"), lines
        for text in expected:
            assert text in lines[-1], lines[-1]

    # 4-band TIFFs, default --in-channels 3 / --in-channels 5.
    fails(train_args(data, tmp_path / "r1", model_file), "000.tif", "has 4 bands but 3 channels are expected")
    fails(train_args(data, tmp_path / "r2", model_file, "--in-channels", "5"), "has 4 bands but 5 channels")
    # One TIFF of the set with a wrong band count.
    tifffile.imwrite(data / "images" / "train" / "001.tif", np.zeros((72, 80, 5), np.uint16), photometric="minisblack")
    fails(train_args(data, tmp_path / "r3", model_file, "--in-channels", "4", "--mean", "1,1,1,1", "--std", "1,1,1,1"),
          "001.tif", "has 5 bands but 4 channels")  # fmt: skip
    fails(train_args(data, tmp_path / "r4", model_file, "--in-channels", "4", "--mean", "1,1,1"),
          "mean has 3 values but in_channels=4")  # fmt: skip
    # RGB PNGs with --in-channels 4.
    rgb = tmp_path / "rgb"
    (rgb / "images" / "train").mkdir(parents=True)
    (rgb / "masks" / "train").mkdir(parents=True)
    image, mask = synthetic_pair(np.random.default_rng(0))
    Image.fromarray(image).save(rgb / "images" / "train" / "a.png")
    Image.fromarray(mask).save(rgb / "masks" / "train" / "a.png")
    (rgb / "classes.txt").write_text("background\ndisc\nband\n")
    fails(train_args(rgb, tmp_path / "r5", model_file, "--in-channels", "4"), "a.png", "must be multi-band TIFF")
