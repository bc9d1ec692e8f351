"""The built-in synthetic dataset: deterministic, in the folder layout, every class present, texture matters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segformer.cli import main
from segformer.data import synth
from segformer.imageio import read_image, read_mask


def test_render_is_deterministic_and_seed_dependent():
    a_img, a_mask = synth.render_scene(np.random.default_rng(3), 64)
    b_img, b_mask = synth.render_scene(np.random.default_rng(3), 64)
    c_img, _ = synth.render_scene(np.random.default_rng(4), 64)
    assert a_img.shape == (64, 64, 3) and a_img.dtype == np.uint8
    assert a_mask.shape == (64, 64) and a_mask.dtype == np.uint8
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_every_class_appears_and_no_class_dominates():
    counts = np.zeros(len(synth.CLASS_NAMES))
    for i in range(60):
        _, mask = synth.render_scene(np.random.default_rng(i), 96)
        counts += np.bincount(mask.ravel(), minlength=len(synth.CLASS_NAMES))
    assert mask.max() < len(synth.CLASS_NAMES)
    share = counts / counts.sum()
    assert share.min() > 0.01, share  # every class is learnable
    assert share[synth.BACKGROUND] < 0.8, share


def test_colour_alone_does_not_identify_a_class():
    """Mean colours of the shape classes overlap: the per-class mean RGB differs far less than its spread."""
    colours: dict[int, list[np.ndarray]] = {c: [] for c in synth.SHAPES}
    for i in range(80):
        image, mask = synth.render_scene(np.random.default_rng(100 + i), 96)
        for c in synth.SHAPES:
            if (mask == c).sum() > 50:
                colours[c].append(image[mask == c].mean(0))
    means = np.array([np.mean(v, axis=0) for v in colours.values()])
    spread = np.mean([np.std(v, axis=0).mean() for v in colours.values()])
    assert np.ptp(means, axis=0).max() < spread, (means, spread)


def test_textures_differ_between_classes():
    size = 64
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rng = np.random.default_rng(0)
    patterns = {c: fn(xx, yy, 8.0, rng) for c, fn in synth.TEXTURES.items()}
    for c, t in patterns.items():
        assert t.min() >= 0 and t.max() <= 1 and t.std() > 0.2, c  # a visible two-tone texture
    keys = list(patterns)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert np.abs(patterns[a] - patterns[b]).mean() > 0.1, (a, b)


def test_write_dataset_layout_reuse_and_refusal(tmp_path):
    root = synth.write_dataset(tmp_path / "synth", train=3, val=2, size=48, seed=1)
    assert (root / "classes.txt").read_text().split("\n")[:2] == ["background", "striped disk"]
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == [f"train_0000{i}.png" for i in range(3)]
    assert len(list((root / "masks" / "val").iterdir())) == 2
    image = read_image(root / "images" / "val" / "val_00001.png")
    mask = read_mask(root / "masks" / "val" / "val_00001.png")
    expected_image, expected_mask = synth.render_scene(synth._scene_rng(1, "val", 1), 48)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(mask, expected_mask)
    assert json.loads((root / synth.MANIFEST).read_text())["train"] == 3

    before = (root / "images" / "train" / "train_00000.png").stat().st_mtime_ns
    synth.write_dataset(root, train=3, val=2, size=48, seed=1)  # same spec: reused untouched
    assert (root / "images" / "train" / "train_00000.png").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="overwrite"):
        synth.write_dataset(root, train=4, val=2, size=48, seed=1)
    synth.write_dataset(root, train=4, val=2, size=48, seed=1, overwrite=True)
    assert len(list((root / "images" / "train").iterdir())) == 4

    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        synth.write_dataset(other, train=1, val=1, size=48, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_folder_dataset_reads_it(tmp_path):
    from segformer.data import build_dataset

    root = synth.write_dataset(tmp_path / "s", train=2, val=1, size=40)
    ds = build_dataset("folder", root, "train")
    assert len(ds) == 2 and ds.num_classes == len(synth.CLASS_NAMES)
    assert tuple(ds.class_names) == synth.CLASS_NAMES
    image, mask, _ = ds.load(0)
    assert image.shape == (40, 40, 3) and mask.shape == (40, 40) and mask.max() < ds.num_classes


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--size", "40"]) == 0
    assert "2 train + 1 val" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "images" / "train").iterdir())) == 2
    assert (
        main(["synth", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1", "--size", "32", "--seed", "1"]) == 2
    )
    assert "overwrite" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "e"), "--train", "0"]) == 2
