"""GeoTIFF rasters: tiled, blended prediction of any size (equal to whole-raster prediction where the tiles see
enough, seams bounded by the blending), the grid, tags and nodata kept, memory flat as the raster grows, training
windows and whole-raster evaluation that matches predict's output, and one clear line for each kind of bad input.

The reference for tiling is a model whose output depends only on a 5x5 neighbourhood (`LocalModel`), run on the
whole raster by plain torch in the test: wherever every tile covering a pixel holds that neighbourhood, the tiled
probabilities must equal it; elsewhere the error is bounded by the window weight of the tiles that do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio  # the geo extra, in the dev extra: a broken install fails here rather than skipping
import torch
from affine import Affine
from torch import nn

from segformer.cli import main
from segformer.data.labels import LabelConvention
from segformer.data.raster import RasterDataset, label_ids
from segformer.geoio import RasterError, gdal_env, open_raster
from segformer.inference import Segmenter
from segformer.inference.raster import RasterOutput, predict_raster, predict_rasters, predict_strips
from segformer.model.config import SegFormerConfig

CRS = "EPSG:32633"
TRANSFORM = Affine(10, 0, 500000, 0, -10, 4200000)
MEAN, STD = (1000.0, 1200.0, 900.0, 3000.0), (300.0, 250.0, 200.0, 800.0)
RADIUS = 2  # LocalModel's receptive field: 5x5


class LocalModel(nn.Module):
    """Logits (B, K, H, W) from one fixed 5x5 convolution of the normalised bands: each output pixel depends on its
    5x5 neighbourhood only (zero padding at the border, as the tiles' own borders)."""

    def __init__(self, channels: int = 4, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        stats = {"mean": MEAN[:channels], "std": STD[:channels]}
        self.config = SegFormerConfig(num_classes=classes, in_channels=channels, **stats)
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, classes, 2 * RADIUS + 1, padding=RADIUS)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.3)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def write_raster(path: Path, bands: np.ndarray, nodata: float | None = 0, crs: str = CRS, transform=TRANSFORM,
                 tags: dict | None = None) -> Path:  # fmt: skip
    """bands (C, H, W) as a GeoTIFF on the test grid."""
    c, h, w = bands.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": str(bands.dtype), "crs": crs,
               "transform": transform, "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        if tags:
            dst.update_tags(**tags)
    return path


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """4 uint16 bands (4, h, w) of smooth-ish noise around the test statistics, never 0 (0 = nodata)."""
    base = rng.normal(0, 1, (4, h // 4 + 2, w // 4 + 2))
    smooth = np.kron(base, np.ones((4, 4)))[:, :h, :w] + 0.3 * rng.normal(0, 1, (4, h, w))
    values = np.asarray(MEAN)[:, None, None] + smooth * np.asarray(STD)[:, None, None]
    return values.clip(1, 60000).astype(np.uint16)


def reference(model: LocalModel, bands: np.ndarray) -> np.ndarray:
    """Softmax probabilities (K, H, W) of the whole raster by plain torch (no tiling)."""
    x = torch.from_numpy(bands.astype(np.float32))
    x = (x - torch.tensor(MEAN).view(4, 1, 1)) / torch.tensor(STD).view(4, 1, 1)
    with torch.no_grad():
        return model(x[None])[0].softmax(0).numpy()


def tiled(segmenter: Segmenter, path: Path, budget: int = 256 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, valid, probabilities) of the whole raster assembled from `predict_strips`, checking every pixel is
    in exactly one strip."""
    with gdal_env(), open_raster(path) as src:
        labels = np.full((src.height, src.width), -1)
        valid = np.zeros((src.height, src.width), bool)
        probs = np.full((segmenter.model.config.num_classes, src.height, src.width), np.nan, np.float32)
        for strip in predict_strips(segmenter, src, (1, 2, 3, 4), probabilities=True, budget=budget):
            (r0, r1), (c0, c1) = strip.rows, strip.cols
            assert (labels[r0:r1, c0:c1] == -1).all()
            labels[r0:r1, c0:c1], valid[r0:r1, c0:c1] = strip.labels, strip.valid
            probs[:, r0:r1, c0:c1] = strip.probabilities
    assert (labels >= 0).all()
    return labels, valid, probs


def complete(size: int, tile: int, stride: int) -> np.ndarray:
    """Along one axis: whether every tile covering a position holds its whole 5x5 neighbourhood (tiles start every
    `stride`, the last one ending at the border; a tile edge on the raster border is complete, as the whole
    raster's own zero padding)."""
    count = max(size - tile + stride - 1, 0) // stride + 1
    ok = np.ones(size, bool)
    for i in range(count):
        start = min(i * stride, size - tile)
        end = start + tile
        span = np.arange(start, end)
        inner = np.ones(tile, bool)
        if start > 0:
            inner &= span >= start + RADIUS
        if end < size:
            inner &= span < end - RADIUS
        ok[span[~inner]] = False
    return ok


@pytest.fixture(scope="module")
def local() -> LocalModel:
    return LocalModel()


# ---------------------------------------------------------------------------------------------------------------
# Tiling and blending
# ---------------------------------------------------------------------------------------------------------------
def test_tiled_prediction_equals_whole_where_tiles_see_enough_and_seams_are_bounded(tmp_path, local):
    bands = scene(np.random.default_rng(0), 150, 170)
    path = write_raster(tmp_path / "s.tif", bands, nodata=None)
    whole = reference(local, bands)
    labels, valid, probs = tiled(Segmenter(local, crop=(64, 64), stride=(48, 48)), path)
    assert valid.all()
    inside = complete(150, 64, 48)[:, None] & complete(170, 64, 48)[None, :]
    assert 0.5 < inside.mean() < 0.95  # both kinds of pixels are there
    error = np.abs(probs - whole).max(axis=0)
    assert error[inside].max() < 1e-5
    decided = np.sort(whole, axis=0)[-1] - np.sort(whole, axis=0)[-2] > 1e-4
    assert np.array_equal(labels[inside & decided], whole.argmax(0)[inside & decided])
    # Seams: a tile whose view is cut weighs at most sin^2(pi/2 * (RADIUS - 0.5) / 16) there (overlap 16).
    bound = np.sin(0.5 * np.pi * (RADIUS - 0.5) / 16) ** 2
    assert 0 < error[~inside].max() <= bound + 1e-5

    # Without overlap (hard seams) the cut views show at full weight.
    _, _, hard = tiled(Segmenter(local, crop=(64, 64), stride=(64, 64)), path)
    assert np.abs(hard - whole).max() > 5 * bound


def test_column_bands_do_not_change_the_result(tmp_path, local):
    path = write_raster(tmp_path / "s.tif", scene(np.random.default_rng(1), 90, 260), nodata=None)
    segmenter = Segmenter(local, crop=(64, 64), stride=(48, 48))
    one = tiled(segmenter, path)
    many = tiled(segmenter, path, budget=64 * 4 * (3 + 1 + 8) * 70)  # about 70 columns per band: 4 bands
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a, b)


def test_small_raster_is_one_tile_and_equals_the_whole_raster(tmp_path, local):
    bands = scene(np.random.default_rng(2), 40, 52)
    labels, _, probs = tiled(Segmenter(local), write_raster(tmp_path / "s.tif", bands, nodata=None))
    assert np.abs(probs - reference(local, bands)).max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# What is kept: grid, tags, nodata, outputs
# ---------------------------------------------------------------------------------------------------------------
def test_grid_tags_and_nodata_round_trip(tmp_path, local):
    bands = scene(np.random.default_rng(3), 600, 700)
    bands[:, :120, :200] = 0  # a corner without data
    bands[2, 300:310, 300:320] = 0  # one band missing: no data there either
    path = write_raster(tmp_path / "s.tif", bands, nodata=0, tags={"SENSOR": "test", "DATE": "2024-06-01"})
    output = RasterOutput(probabilities=True, confidence=True)
    written = predict_raster(Segmenter(local, crop=(128, 128)), path, tmp_path / "out" / "s", output=output,
                             class_names=("water", "field", "forest"))  # fmt: skip
    names = [p.name for p in written]
    assert names == ["s.tif", "s_prob.tif", "s_confidence.tif", "s_overlay.png"]
    no_data = (bands == 0).any(axis=0)
    with rasterio.open(tmp_path / "out" / "s.tif") as out, rasterio.open(path) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        tags = out.tags()
        assert tags["SENSOR"] == "test" and tags["DATE"] == "2024-06-01"
        assert json.loads(tags["CLASS_NAMES"]) == ["water", "field", "forest"]
        assert out.nodata == 255 and out.dtypes[0] == "uint8"
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and out.overviews(1)
        labels = out.read(1)
        assert out.colormap(1)[1][:3] is not None
    assert (labels[no_data] == 255).all() and (labels[~no_data] < 3).all()
    with rasterio.open(tmp_path / "out" / "s_prob.tif") as p, rasterio.open(tmp_path / "out" / "s_confidence.tif") as c:
        probs, confidence = p.read(), c.read(1)
        assert p.crs == out.crs and p.descriptions == ("water", "field", "forest")
    assert np.isnan(probs[:, no_data]).all() and np.isnan(confidence[no_data]).all()
    assert np.allclose(probs[:, ~no_data].sum(0), 1, atol=1e-5)
    assert np.array_equal(probs[:, ~no_data].argmax(0), labels[~no_data])
    assert np.allclose(confidence[~no_data], probs[:, ~no_data].max(0))


def test_a_mask_band_is_nodata_too_and_plain_geotiff_without_cog(tmp_path, local):
    bands = scene(np.random.default_rng(4), 80, 90)
    path = write_raster(tmp_path / "m.tif", bands, nodata=None)
    mask = np.full((80, 90), 255, np.uint8)
    mask[:, :30] = 0
    with rasterio.open(path, "r+") as dst:
        dst.write_mask(mask)
    predict_raster(Segmenter(local), path, tmp_path / "m", output=RasterOutput(cog=False, overlay=False))
    with rasterio.open(tmp_path / "m.tif") as out:
        labels = out.read(1)
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG" and out.block_shapes[0] == (512, 512)
    assert (labels[:, :30] == 255).all() and (labels[:, 30:] < 3).all()


def test_bands_pick_and_order_the_input(tmp_path):
    """--bands 4,3,2 on a 4-band raster equals the same 3-channel model on a raster holding bands 4, 3, 2."""
    bands = scene(np.random.default_rng(5), 70, 60)
    model = LocalModel(channels=3)
    stats = {"mean": (MEAN[3], MEAN[2], MEAN[1]), "std": (STD[3], STD[2], STD[1])}
    model.config = SegFormerConfig(num_classes=3, in_channels=3, **stats)
    four = write_raster(tmp_path / "four.tif", bands)
    three = write_raster(tmp_path / "three.tif", bands[[3, 2, 1]])
    predict_raster(Segmenter(model), four, tmp_path / "a", bands=(4, 3, 2), output=RasterOutput(overlay=False))
    predict_raster(Segmenter(model), three, tmp_path / "b", output=RasterOutput(overlay=False))
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert np.array_equal(a.read(1), b.read(1))


# ---------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------
MEMORY_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from test_raster import LocalModel
from segformer.inference import Segmenter
from segformer.inference import raster
from segformer.inference.raster import RasterOutput, predict_raster
torch.set_num_threads(1)
raster.ACCUMULATOR_BYTES = {budget}
predict_raster(Segmenter(LocalModel(), crop=(256, 256)), sys.argv[1], sys.argv[2], output=RasterOutput(overlay=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def write_large(path: Path, side: int) -> Path:
    """A side x side 4-band uint16 GeoTIFF of noise, written 256 rows at a time (the test's memory stays small)."""
    from rasterio.windows import Window

    rng = np.random.default_rng(side)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 4, "dtype": "uint16", "crs": CRS,
               "transform": TRANSFORM, "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, side, 256):
            dst.write(rng.integers(1, 6000, (4, 256, side), dtype=np.uint16), window=Window(0, top, side, 256))
    return path


@pytest.mark.slow
def test_peak_memory_stays_flat_as_the_raster_grows(tmp_path):
    """Peak RSS of a fresh process predicting a 2048^2 and a 4096^2 raster (4x the pixels): about the same. The
    accumulator budget is cut to 8 MB so that both run in column bands (at the default 256 MB a row of tiles
    holds the raster's whole width up to about 8000 columns for a 7-class model with 512 tiles)."""
    peaks = {}
    for side in (2048, 4096):
        path = write_large(tmp_path / f"s{side}.tif", side)
        script = MEMORY_SCRIPT.format(tests=str(Path(__file__).parent), budget=8 << 20)
        done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / f"o{side}")],
                              capture_output=True, text=True, check=True)  # fmt: skip
        peaks[side] = int(done.stdout.split()[-1])
    # The larger raster's bands alone are 192 MB more as float32, its probabilities 144 MB more: none is held.
    assert peaks[4096] - peaks[2048] < 16, peaks


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one clear line each
# ---------------------------------------------------------------------------------------------------------------
def _one_line(text: str, *parts: str) -> str:
    lines = [line for line in text.strip().splitlines() if any(p in line for p in parts[:1])]
    assert len(lines) == 1, text
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def weights4(tmp_path_factory) -> Path:
    """A tiny 4-channel, 3-class SegFormer with the test statistics, saved."""
    from segformer import create_model

    folder = tmp_path_factory.mktemp("w4")
    torch.manual_seed(0)
    create_model("b0", num_classes=3, in_channels=4, mean=MEAN, std=STD, embed_dims=(8, 16, 40, 64),
                 depths=(1, 1, 1, 1), decoder_dim=32).save_pretrained(folder)  # fmt: skip
    return folder


def test_predict_bad_rasters_fail_with_one_line_each(tmp_path, weights4, capsys):
    fake = tmp_path / "fake.tif"
    fake.write_text("not a raster")
    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 40, 40), np.uint16), nodata=0)
    good = write_raster(tmp_path / "good.tif", scene(np.random.default_rng(6), 40, 40))
    args = ["predict", str(weights4), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]

    assert main([*args, str(fake), "--raster"]) == 1
    _one_line(capsys.readouterr().err, "fake.tif", "not a raster GDAL can read")
    assert main([*args, str(empty)]) == 1
    _one_line(capsys.readouterr().err, "empty.tif", "every pixel is nodata (nodata value 0)")
    assert main([*args, str(good), "--bands", "5,3,2,1"]) == 1
    _one_line(capsys.readouterr().err, "good.tif", "band 5 is out of range; it has 4 bands (1..4)")
    assert main([*args, str(good), "--bands", "3,2,1"]) == 1
    _one_line(capsys.readouterr().err, "good.tif", "--bands names 3 bands but the model takes 4")
    assert not list((tmp_path / "out").glob("*.tif"))  # nothing half-written, no scratch files
    assert not list((tmp_path / "out").glob(".*"))
    assert main([*args, str(good)]) == 0
    assert "wrote 1 GeoTIFF class rasters" in capsys.readouterr().out


def pair(root: Path, split: str, name: str, bands: np.ndarray, labels: np.ndarray, **label_grid) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    write_raster(root / "images" / split / name, bands)
    write_raster(root / "masks" / split / name, labels[None].astype(np.uint8), nodata=255, **label_grid)


def test_training_data_errors_are_one_line_each(tmp_path, capsys):
    rng = np.random.default_rng(7)
    root = tmp_path / "d"
    labels = rng.integers(0, 3, (64, 64))
    pair(root, "crs", "a.tif", scene(rng, 64, 64), labels, crs="EPSG:4326", transform=Affine(1e-4, 0, 14, 0, -1e-4, 38))
    with pytest.raises(RasterError) as e:
        RasterDataset([(root / "images/crs/a.tif", root / "masks/crs/a.tif")], ("a", "b", "c"))
    grids = (
        "EPSG:32633, transform (10, 0, 500000, 0, -10, 4200000)",
        "EPSG:4326, transform (0.0001, 0, 14, 0, -0.0001, 38)",
    )
    line = _one_line(str(e.value), "a.tif", "another grid", "images/crs/a.tif", *grids)
    assert "never resampled" in line
    kept = RasterDataset([(root / "images/crs/a.tif", root / "masks/crs/a.tif")], ("a", "b", "c"), skip_bad=True)
    assert kept.pairs == [] and kept.dropped == 1 and kept.rejected[0][2] == str(e.value)  # skip_bad: left out, said

    bad = labels.copy()
    bad[5, 5] = 9
    pair(root, "big", "b.tif", scene(rng, 64, 64), bad)
    ds = RasterDataset([(root / "images/big/b.tif", root / "masks/big/b.tif")], ("a", "b", "c"), window=64)
    with pytest.raises(RasterError) as e:
        ds.load(0)
    _one_line(str(e.value), "masks/big/b.tif", "label value 9 is >= num_classes 3", "its nodata is 255")
    pair(root, "empty", "c.tif", np.zeros((4, 64, 64), np.uint16), labels)
    with pytest.raises(RasterError) as e:
        RasterDataset([(root / "images/empty/c.tif", root / "masks/empty/c.tif")], ("a", "b", "c"))
    _one_line(str(e.value), "images/empty/c.tif", "every pixel is nodata")
    (root / "classes.txt").write_text("a\nb\nc\n")

    assert main(["data", "check", "--dataset", "raster", "--data-root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    _one_line(out, "error: [crs]", "another grid", "EPSG:4326")
    _one_line(out, "problem: label rasters hold 9", ">= num_classes 3 and not the rasters' nodata", "--label-map 9:255")
    _one_line(out, "problem: [empty]", "every pixel is nodata", "images/empty/c.tif")


def test_data_check_reports_band_statistics_label_values_and_nodata(tmp_path):
    from segformer.data.check import check_dataset

    rng = np.random.default_rng(10)
    root, values = tmp_path / "d", []
    for name in ("a.tif", "b.tif"):
        bands, labels = scene(rng, 60, 50), rng.integers(0, 3, (60, 50))
        bands[:, :20] = 0
        labels[:5] = 255
        pair(root, "train", name, bands, labels)
        values.append(bands.reshape(4, -1)[:, bands.reshape(4, -1)[0] > 0].astype(np.float64))
    (root / "classes.txt").write_text("a\nb\nc\n")
    report = check_dataset("raster", root, progress=False)
    assert report.ok, report.format()
    (stats,) = [d.message for d in report.diagnoses if d.code == "band_statistics"]
    mean_text, std_text = stats.split("per-band mean ")[1].split("; ")[0].split(", std ")
    every = np.concatenate(values, axis=1)
    assert np.allclose([float(v) for v in mean_text.split()], every.mean(1), rtol=1e-5)
    assert np.allclose([float(v) for v in std_text.split()], every.std(1), rtol=1e-5)
    assert [r["nodata"] for r in report.splits["train"].rasters] == [round(20 / 60, 6)] * 2
    assert report.format().count("% nodata") == 2 and "33.3% nodata" in report.format()
    assert sum(report.splits["train"].values[v][0] for v in (0, 1, 2)) == 2 * 55 * 50  # label nodata left out


def test_data_check_flags_band_sets_grids_and_sparse_rasters_as_rules(tmp_path):
    """The raster rules of `data check` (data/check/rules.py): other bands in a split (a problem), image rasters in
    several CRSs/resolutions (a warning), mostly nodata (a warning); the RasterDataset it builds leaves out nothing
    silently when training (the 3-band raster raises there)."""
    from segformer.data.check import check_dataset

    rng = np.random.default_rng(12)
    root = tmp_path / "d"
    labels = rng.integers(0, 3, (40, 40))
    pair(root, "train", "a.tif", scene(rng, 40, 40), labels)
    pair(root, "train", "b.tif", scene(rng, 40, 40)[:3], labels)
    sparse = scene(rng, 40, 40)
    sparse[:, :, :30] = 0  # 75% without data
    grid = {"crs": "EPSG:4326", "transform": Affine(1e-4, 0, 14, 0, -1e-4, 38)}
    pair(root, "val", "c.tif", sparse, labels, **grid)
    write_raster(root / "images" / "val" / "c.tif", sparse, **grid)  # the image on the label's grid
    (root / "classes.txt").write_text("a\nb\nc\n")
    report = check_dataset("raster", root, progress=False)
    found = {d.code: d for d in report.diagnoses}
    assert [d.code for d in report.problems] == ["band_counts"] and found["band_counts"].split == "train"
    assert "b.tif (3 x uint16)" in found["band_counts"].message and "(4 x uint16)" in found["band_counts"].message
    assert found["grids_differ"].severity == "warning" and "EPSG:4326" in found["grids_differ"].message
    assert found["mostly_nodata"].split == "val" and "images/val/c.tif" in found["mostly_nodata"].message
    assert report.splits["val"].rasters[0]["nodata"] == 0.75
    with pytest.raises(RasterError, match="b.tif: has 3 bands but .*a.tif has 4"):
        RasterDataset([(root / f"images/train/{n}", root / f"masks/train/{n}") for n in ("a.tif", "b.tif")], "abc")


def test_label_ids_map_nodata_and_the_label_convention():
    raw = np.array([[0, 1, 2], [7, 3, 0]], np.uint16)
    ids = label_ids(raw, 7, LabelConvention(label_map=((3, 255),)), 3, "x.tif")
    assert ids.tolist() == [[0, 1, 2], [255, 255, 0]]
    with pytest.raises(RasterError, match="x.tif: label value 3 is >= num_classes 3 and not nodata"):
        label_ids(raw, 7, LabelConvention(), 3, "x.tif")


# ---------------------------------------------------------------------------------------------------------------
# Training windows
# ---------------------------------------------------------------------------------------------------------------
def test_training_windows_are_seeded_and_skip_windows_without_data(tmp_path):
    rng = np.random.default_rng(8)
    bands, labels = scene(rng, 200, 200), rng.integers(0, 3, (200, 200))
    bands[:, :, :140] = 0  # 70% without data
    root = tmp_path / "d"
    pair(root, "train", "a.tif", bands, labels)
    pairs = [(root / "images/train/a.tif", root / "masks/train/a.tif")]
    ds = RasterDataset(pairs, ("a", "b", "c"), window=64)
    again = RasterDataset(pairs, ("a", "b", "c"), window=64)
    assert len(ds) == 3  # 12000 pixels with data / 64^2
    for i in range(12):
        image, ids, name = ds.load(i)
        assert image.shape == (64, 64, 4) and ids.shape == (64, 64)
        assert (ids != 255).mean() >= 0.5, name  # mostly-nodata windows are redrawn
        y, x = (int(v) for v in name.split("@")[1].split(","))
        expected = np.where(bands[0, y : y + 64, x : x + 64] > 0, labels[y : y + 64, x : x + 64], 255)
        assert np.array_equal(ids, expected)
        filled = image[bands[:, y : y + 64, x : x + 64].transpose(1, 2, 0) == 0]
        assert (filled > 0).all()  # no-data pixels hold the band means, not 0
        other_image, other_ids, other_name = again.load(i)
        assert other_name == name and np.array_equal(other_image, image)
    names = {ds.load(i)[2] for i in range(12)}
    assert len(names) > 6
    # --class-weights auto counts the whole label raster where the image has data.
    assert ds.class_pixel_counts().tolist() == np.bincount(labels[:, 140:].ravel(), minlength=3).tolist()


# ---------------------------------------------------------------------------------------------------------------
# End to end, folders and ranks
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_four_band_rasters_train_evaluate_and_predict_end_to_end(tmp_path, capsys):
    data, run = tmp_path / "geo", tmp_path / "run"
    assert main(["synth", "--raster", "--out", str(data), "--train", "2", "--val", "1", "--size", "96"]) == 0
    model = tmp_path / "tiny.json"
    model.write_text(json.dumps({"embed_dims": [8, 16, 40, 64], "depths": [1, 1, 1, 1], "decoder_dim": 32}))
    assert main(["train", "--model", str(model), "--dataset", "raster", "--data-root", str(data), "--in-channels",
                 "4", "--crop", "96", "--iters", "2", "--batch-size", "2", "--num-workers", "0", "--eval-every",
                 "0", "--warmup-iters", "0", "--out", str(run)]) == 0  # fmt: skip
    trained = run / "final"
    config = json.loads((trained / "config.json").read_text())
    assert config["segformer_test_protocol"]["crop"] == [96, 96] and config["num_channels"] == 4
    values = []  # every pixel with data of the training rasters (band values, numpy's statistics)
    for image in sorted((data / "images" / "train").glob("*.tif")):
        with rasterio.open(image) as src:
            pixels = src.read().reshape(4, -1).astype(np.float64)
            values.append(pixels[:, (pixels != 0).all(axis=0)])
    values = np.concatenate(values, axis=1)
    assert np.allclose(config["segformer_mean"], values.mean(1), rtol=1e-9)
    assert np.allclose(config["segformer_std"], values.std(1), rtol=1e-9)

    capsys.readouterr()
    assert main(["eval", str(trained), "--dataset", "raster", "--data-root", str(data), "--out", str(tmp_path / "ev"),
                 "--num-workers", "0", "--no-progress"]) == 0  # fmt: skip
    assert main(["predict", str(trained), str(data / "images" / "val"), "--out", str(tmp_path / "pred"),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "pred" / "scene_000.tif") as p, rasterio.open(data / "masks/val/scene_000.tif") as l:
        predicted, labels = p.read(1).astype(np.int64), l.read(1).astype(np.int64)
        assert p.crs == l.crs and p.transform == l.transform
    scored = (labels != 255) & (predicted != 255)
    matrix = np.bincount(labels[scored] * 7 + predicted[scored], minlength=49).reshape(7, 7)
    assert np.array_equal(np.load(tmp_path / "ev" / "confusion.npy"), matrix)  # eval = predict's GeoTIFF
    assert (tmp_path / "pred" / "scene_000_overlay.png").is_file()


def test_folders_split_across_ranks_and_never_overwrite_inputs(tmp_path, local):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for name in ("a.tif", "b.tif", "sub/c.tif"):
        write_raster(folder / name, scene(rng, 40, 40))
    from segformer.geoio import is_georeferenced
    from segformer.inference.raster import collect_rasters

    files = collect_rasters([folder], tmp_path / "out", is_georeferenced)
    output = RasterOutput(overlay=False)
    shares = [predict_rasters(Segmenter(local), files, tmp_path / "out", output=output, shard=(r, 2), progress=False)
              for r in range(2)]  # fmt: skip
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for s in shares for p in s.written)
    assert written == ["a.tif", "b.tif", "sub/c.tif"] and [len(s.written) for s in shares] == [2, 1]

    failures = []
    predict_rasters(Segmenter(local), files, folder, output=output, progress=False, shard=(0, 1),
                    report=lambda n, r: failures.append(r))  # fmt: skip
    assert len(failures) == 3 and all("would overwrite an input" in r for r in failures)


@pytest.mark.slow
def test_torchrun_splits_a_folder_of_geotiffs_and_writes_what_one_process_writes(tmp_path, weights4):
    """`torchrun ... segformer predict` over a folder of GeoTIFFs: each process takes its share (rank, rank + world,
    ...), every raster is written once, and the class rasters equal one process's."""
    folder, one, two = tmp_path / "in", tmp_path / "one", tmp_path / "two"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name in ("a.tif", "b.tif", "sub/c.tif"):
        write_raster(folder / name, scene(rng, 48, 64))
    argv = ["predict", str(weights4), str(folder), "--no-progress", "--device", "cpu", "--crop", "32", "--no-cog"]
    assert main([*argv, "--out", str(one)]) == 0
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run([*launch, "-m", "segformer", *argv, "--out", str(two)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 3 GeoTIFF class rasters") == 1  # the ranks' counts summed: each raster once
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    assert {"a.tif", "b.tif", "sub/c.tif"} <= set(files)
    for name in ("a.tif", "b.tif", "sub/c.tif"):
        with rasterio.open(one / name) as x, rasterio.open(two / name) as y:
            assert x.crs == y.crs and x.transform == y.transform
            np.testing.assert_array_equal(x.read(1), y.read(1))
