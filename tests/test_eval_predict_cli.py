"""`segformer eval` and `segformer predict` end to end on tiny data written here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NAMES, TINY
from segformer import Segmenter, create_model, evaluate, load_model
from segformer.cli import main
from segformer.data import build_dataset


def write_folder_dataset(root: Path, classes: tuple[str, ...], n: int = 3, top_label: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(n):
        h, w = (48, 64) if i < 2 else (64, 40)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / "val" / f"im{i}.png")
        mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        mask[:5] = 255
        if top_label is not None and i == 1:
            mask[20, 20] = top_label
        Image.fromarray(mask).save(root / "masks" / "val" / f"im{i}.png")
    return root


def test_eval_cli_writes_table_metrics_and_confusion(weights, tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", NAMES)
    out = tmp_path / "eval"
    argv = ["eval", str(weights), "--dataset", "folder", "--data-root", str(root), "--out", str(out)]
    assert main([*argv, "--num-workers", "0", "--no-progress", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and all(name in printed for name in NAMES)

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"aAcc", "mIoU", "mAcc", "mDice", "per_class"}
    assert list(metrics["per_class"]) == list(NAMES)
    expected = evaluate(load_model(weights), build_dataset("folder", root, "val"), progress=False)
    for key in ("aAcc", "mIoU", "mAcc", "mDice"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9)
        assert f"{key} {100 * expected[key]:.2f}" in printed  # the table is in percent
    matrix = np.load(out / "confusion.npy")
    assert matrix.shape == (3, 3) and matrix.sum() == 2 * 43 * 64 + 59 * 40  # every non-ignore pixel, once
    with Image.open(out / "confusion.png") as png:
        assert png.size[0] > 3 and png.mode == "RGB"


def test_eval_cli_names_the_file_with_a_label_beyond_the_model(weights, tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", (*NAMES, "tree", "sign"), top_label=4)
    argv = ["eval", str(weights), "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "o")]
    assert main([*argv, "--num-workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segformer eval: error:")
    assert "im1.png" in err[0] and "label value 4" in err[0] and "3 classes" in err[0]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_predict_cli_skips_a_corrupt_file_and_writes_the_others(weights, tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "photos"
    (src / "nested").mkdir(parents=True)
    rgb = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src / "b.jpg")
    Image.fromarray((rng.integers(0, 65535, (36, 44))).astype(np.uint16)).save(src / "nested" / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (36, 44, 4), dtype=np.uint8)).save(src / "nested" / "alpha.png")
    (src / "nested" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(src), "--out", str(out), "--probabilities", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg: " in captured.err  # reported as it happens, with the reason
    assert "4 label maps" in captured.out and "1 failed" in captured.out

    labels = np.asarray(Image.open(out / "a.png"))
    assert Image.open(out / "a.png").mode == "P"  # palette PNG: pixel values are the class ids
    np.testing.assert_array_equal(labels, Segmenter(load_model(weights))(rgb))
    for stem, size in [("b", (40, 56)), ("nested/deep16", (36, 44)), ("nested/alpha", (36, 44))]:
        assert np.asarray(Image.open(out / f"{stem}.png")).shape == size
        with Image.open(out / f"{stem}_overlay.jpg") as overlay:
            assert overlay.size == (size[1], size[0])
        probs = np.load(out / f"{stem}_prob.npy")
        assert probs.dtype == np.float16 and probs.shape == (3, *size)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=1e-2)
    assert not list(out.rglob("broken*"))


def test_predict_never_overwrites_its_inputs(weights, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    image = np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(src / "x.png")
    Image.fromarray(image).save(src / "y.jpg")
    before = (src / "x.png").read_bytes()
    assert main(["predict", str(weights), str(src), str(tmp_path / "missing.jpg"), "--out", str(src)]) == 1
    assert (src / "x.png").read_bytes() == before
    assert (src / "y_overlay.jpg").is_file()  # the other image is still predicted
    err = capsys.readouterr().err
    assert "would overwrite an input" in err and "missing.jpg: no such file" in err


def test_colorize_and_overlay_blend_exact_colours():
    from segformer.visualize import colorize, overlay

    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    labels = np.array([[0, 1, 2, 255]] * 40)  # 255 = ignore: black in colorize, untouched in overlay
    colours = colorize(labels, palette)
    assert colours[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]]
    image = np.full((40, 4, 3), 100, np.uint8)
    out = overlay(image, labels, palette, alpha=0.25, legend=False)
    assert out[0].tolist() == [[139, 75, 75], [75, 139, 75], [75, 75, 139], [100, 100, 100]]  # 0.75*100 + 0.25*255
    with pytest.raises(ValueError, match="size"):
        overlay(image, labels[:5], palette)


def test_overlay_legend_lists_present_classes_and_keeps_the_size():
    from segformer.visualize import overlay

    palette = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    labels = np.zeros((120, 160), np.int64)
    labels[:, 80:] = 2
    image = np.full((120, 160, 3), 255, np.uint8)
    plain = overlay(image, labels, palette, NAMES, legend=False)
    legend = overlay(image, labels, palette, NAMES)
    assert legend.shape == image.shape and legend.dtype == np.uint8
    changed = np.argwhere((legend != plain).any(axis=2))
    assert changed.size and changed.max(axis=0).tolist()[0] < 60 and changed.min(axis=0).tolist() == [2, 2]
    # both present classes get a swatch in their colour; the absent class 1 does not
    assert (legend == [200, 0, 0]).all(axis=2).sum() > (plain == [200, 0, 0]).all(axis=2).sum()
    assert not (legend == [0, 200, 0]).all(axis=2).any()


def test_save_grid_and_confusion_picture(tmp_path):
    from segformer.visualize import confusion_image, save_grid

    a = np.zeros((30, 40, 3), np.uint8)
    b = np.full((20, 50), 255, np.uint8)
    path = save_grid([[a, b], [b]], tmp_path / "grid.png", titles=["image", "prediction"], gap=4)
    with Image.open(path) as grid:
        width, height = grid.size
    assert width == max(40, 50) + 50 + 3 * 4  # column 0 holds a (40 wide) and, in row 2, b (50 wide)
    assert height > 30 + 20 + 3 * 4  # plus the title line
    heat = confusion_image(np.array([[10, 0], [5, 5]]), cell=10)
    assert heat.ndim == 3 and heat.shape[0] == heat.shape[1] >= 20
    big = confusion_image(np.eye(150, dtype=np.int64))  # no labels: cells only, diagonal dark
    assert big.shape[:2] == (750, 750)
    assert big[2, 2].tolist() == [8, 48, 107] and big[2, 7].tolist() == [255, 255, 255]


def test_eval_report_and_pictures_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write cut short (a full disk, a kill) leaves the previous report files as they were and no temporaries."""
    from segformer.evaluation import ConfusionMatrix
    from segformer.evaluation.evaluate import write_report
    from segformer.visualize import save_grid

    cm = ConfusionMatrix(3, class_names=NAMES)
    cm.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]))
    paths = write_report(tmp_path, {"mIoU": 0.5}, cm)
    save_grid([[np.zeros((8, 8, 3), np.uint8)]], tmp_path / "grid.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"metrics.json", "confusion.npy", "confusion.png", "grid.png"}
    assert np.array_equal(np.load(paths["matrix"]), cm.matrix.numpy())

    def cut_short(target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np, "save", lambda file, *a, **k: cut_short(file.name))
        with pytest.raises(OSError, match="confusion.npy: no space left on device"):
            write_report(tmp_path, {"mIoU": 0.9}, cm)
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", lambda self, fp, *a, **k: cut_short(fp))
        with pytest.raises(OSError, match="grid.png: no space left on device"):
            save_grid([[np.ones((8, 8, 3), np.uint8)]], tmp_path / "grid.png")
        with pytest.raises(OSError, match="confusion.png: no space left on device"):
            write_report(tmp_path, {"mIoU": 0.9}, cm)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "metrics.json"}
    assert after == {k: v for k, v in before.items() if k != "metrics.json"}  # metrics.json is written first
    with pytest.raises(ValueError, match=r"grid\.gif2: no image format ends in '\.gif2'"):
        save_grid([[np.zeros((8, 8, 3), np.uint8)]], tmp_path / "grid.gif2")


def test_predict_palette_follows_the_model_class_count_or_the_flag(tmp_path):
    from segformer.data import DATASETS

    torch.manual_seed(0)
    create_model("b0", num_classes=19, **TINY).save_pretrained(tmp_path / "w19")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    for flag, dataset in [([], "cityscapes"), (["--palette", "voc"], "voc")]:
        out = tmp_path / dataset
        assert main(["predict", str(tmp_path / "w19"), str(tmp_path / "a.jpg"), "--out", str(out), *flag]) == 0
        with Image.open(out / "a.png") as png:
            colours = np.array(png.getpalette()[: 19 * 3]).reshape(19, 3)
        np.testing.assert_array_equal(colours, DATASETS[dataset].palette_array()[:19])
