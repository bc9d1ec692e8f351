"""Hugging Face `datasets` (`--dataset hf`): save_to_disk and parquet folders written here, column detection,
class names, training and evaluation through the CLI, `data check`, and the one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets  # the hf extra (in dev, so CI runs these tests)
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_model_file
from segformer.cli import main
from segformer.data import LabelConvention, build_dataset, check_dataset, hf


@pytest.fixture(autouse=True)
def _local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def rows(n: int, seed: int, size: int = 48, object_value: int = 1) -> dict[str, list]:
    """Red rectangles (class 1) on blue-grey noise (class 0), as PIL images."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        h, w = rng.integers(12, 24, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[y : y + h, x : x + w] = object_value
        image = np.where(mask[..., None] > 0, [220, 60, 40], [40, 60, 90]) + rng.integers(-25, 25, (size, size, 3))
        images.append(Image.fromarray(image.clip(0, 255).astype(np.uint8)))
        masks.append(Image.fromarray(mask))
    return {"images": images, "masks": masks}


def make_split(n: int, seed: int, image_column: str, mask_column: str, **kwargs) -> datasets.Dataset:
    data = rows(n, seed, **kwargs)
    features = datasets.Features({image_column: datasets.Image(), mask_column: datasets.Image()})
    return datasets.Dataset.from_dict({image_column: data["images"], mask_column: data["masks"]}, features=features)


def saved_dataset(folder: Path, image_column: str = "pixel_values", mask_column: str = "label") -> Path:
    """A save_to_disk DatasetDict (train/validation), the sidewalk-semantic column names, an id2label.json."""
    dd = datasets.DatasetDict(
        train=make_split(12, 0, image_column, mask_column), validation=make_split(4, 1, image_column, mask_column)
    )
    dd.save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "object"}))
    return folder


def test_save_to_disk_dataset_trains_and_evaluates(tmp_path, capsys):
    data = saved_dataset(tmp_path / "ds")
    ds = build_dataset("hf", data, "val")  # "val" finds "validation"
    assert len(ds) == 4 and ds.class_names == ("background", "object") and ds.num_classes == 2
    image, mask, name = ds.load(0)
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1} and name == "000000"

    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    argv = ["train", "--model", str(model), "--dataset", "hf", "--data-root", str(data), "--out", str(run)]
    argv += ["--crop", "48", "--scale", "48x48", "--batch-size", "4", "--num-workers", "0", "--warmup-iters", "2"]
    argv += ["--lr", "3e-3", "--log-every", "10", "--eval-every", "0", "--iters", "12"]
    assert main(argv) == 0
    assert "final mIoU" in capsys.readouterr().out
    out = tmp_path / "eval"
    evaluate = ["eval", str(run / "final"), "--dataset", "hf", "--data-root", str(data), "--out", str(out)]
    assert main([*evaluate, "--num-workers", "0", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["background", "object"]
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(final["mIoU"], abs=1e-6)


def test_parquet_folder_splits_columns_and_label_conventions(tmp_path):
    folder = tmp_path / "pq" / "data"
    folder.mkdir(parents=True)
    make_split(3, 0, "image", "annotation", object_value=255).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    make_split(2, 1, "image", "annotation", object_value=255).to_parquet(str(folder / "validation-00000.parquet"))
    root = tmp_path / "pq"
    ds = build_dataset("hf", root, "train", num_classes=2, labels=LabelConvention(label_map=((255, 1),)))
    assert len(ds) == 3 and ds.mask_column == "annotation" and ds.image_column == "image"
    assert set(np.unique(ds.load(0)[1])) == {0, 1}
    assert len(build_dataset("hf", root, "validation", num_classes=2)) == 2
    report = check_dataset("hf", root, num_classes=2, workers=0, progress=False)
    assert set(report.splits) == {"train", "validation"} and report.splits["train"].images == 3
    assert "binary_255" in {d.code for d in report.diagnoses}


def test_class_names_from_a_classlabel_feature_and_explicit_columns(tmp_path):
    data = rows(2, 0)
    features = datasets.Features(
        {
            "photo": datasets.Image(),
            "gt": datasets.List(datasets.List(datasets.ClassLabel(names=["sky", "road"]))),
            "label": datasets.ClassLabel(names=["day", "night"]),  # an image-level label, not a mask
        }
    )
    table = {"photo": data["images"], "gt": [np.asarray(m).tolist() for m in data["masks"]], "label": [0, 1]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(table, features=features)).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="no image column among photo, gt, label"):
        build_dataset("hf", tmp_path / "d", "train")
    ds = build_dataset("hf", tmp_path / "d", "train", image_column="photo", mask_column="gt")
    assert ds.class_names == ("sky", "road")
    assert ds.load(1)[1].shape == (48, 48)
    with pytest.raises(ValueError, match="column 'label' holds ClassLabel, not masks"):
        build_dataset("hf", tmp_path / "d", "train", image_column="photo", mask_column="label")


def test_bad_input_one_line_each(tmp_path, capsys, monkeypatch):
    data = saved_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    capsys.readouterr()

    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(n in err[0] for n in needles), err
        assert not run.exists()

    train = ["train", "--dataset", "hf", "--data-root", str(data), "--out", str(run), "--iters", "1"]
    fails([*train, "--mask-column", "seg"], "no column 'seg'", "pixel_values, label", "--mask-column")
    fails([*train, "--train-split", "test"], "no split 'test'", "train, validation")
    check = ["data", "check", "--dataset", "hf", "--data-root", str(data), "--no-progress"]
    fails([*check, "--image-column", "photo"], "no column 'photo'", "--image-column")
    fails(["train", "--dataset", "folder", "--data-root", str(data), "--mask-column", "x", "--out", str(run)],
          "--image-column/--mask-column are for --dataset hf")  # fmt: skip
    (data / "id2label.json").unlink()
    fails([*train], "no class names", "--num-classes")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    fails([*train], "pip install 'segformer[hf]'")


def test_hub_ids_go_through_load_dataset(tmp_path, monkeypatch):
    seen = []

    def fake_load_dataset(name, *args, **kwargs):
        seen.append(name)
        if name == "someone/missing":
            raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub\nmore lines")
        return datasets.DatasetDict(train=make_split(2, 0, "image", "mask"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    id2label = tmp_path / "id2label.json"
    id2label.write_text(json.dumps({"0": "ground", "1": "rock"}))
    monkeypatch.setattr(hf, "_hub_id2label", lambda source: seen.append(f"id2label of {source}") or id2label)
    ds = build_dataset("hf", "someone/segments", "train")
    assert seen == ["someone/segments", "id2label of someone/segments"] and len(ds) == 2
    assert ds.class_names == ("ground", "rock")
    with pytest.raises(ValueError, match=r"someone/missing: could not load it from the Hugging Face hub .*offline"):
        build_dataset("hf", "someone/missing", "train", num_classes=2)
