"""`segformer data check`: one test per common mistake (the dataset is built, checked, and the diagnosis and the
flag that fixes it asserted), the report's numbers, file problems, JSON, exit codes, and the binary-mask training
that the suggested flag fixes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import tiny_model_file
from segformer.cli import main
from segformer.data import LabelConvention, build_dataset, check_dataset, class_pixel_counts, class_weights
from segformer.data.check import dataset_splits

CAMVID = ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist")


def write_set(root: Path, masks: dict[str, list[np.ndarray]], classes: list[str] | None = None) -> Path:
    """ROOT/images/SPLIT/i.png (noise) with ROOT/masks/SPLIT/i.png (`masks`: L, or RGB when 3-D)."""
    rng = np.random.default_rng(0)
    for split, arrays in masks.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(arrays):
            h, w = mask.shape[:2]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def blobs(values: list[int], n: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0) -> list[np.ndarray]:
    """Masks made of horizontal bands holding `values` (each value in every mask)."""
    out = []
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        bands = np.array_split(np.arange(size[0]), len(values))
        for v, rows in zip(np.roll(values, i + seed), bands, strict=True):
            mask[rows] = v
        out.append(mask)
    return out


def check(capsys, root: Path, *flags: str) -> tuple[int, str]:
    code = main(["data", "check", "--data-root", str(root), "--no-progress", "--workers", "0", *flags])
    return code, capsys.readouterr().out


def codes(report) -> set[str]:
    return {d.code for d in report.diagnoses}


# --------------------------------------------------------------------------------------------- the mistakes
def test_binary_0_255_masks_get_label_map_255_1(tmp_path, capsys):
    root = write_set(tmp_path / "d", {"train": blobs([0, 255]), "val": blobs([0, 255], 1)}, ["background", "object"])
    code, out = check(capsys, root)
    assert code == 1
    assert "255 is ignore: your foreground would never be trained; pass --label-map 255:1" in out
    report = check_dataset("folder", root, workers=0, progress=False)
    assert "binary_255" in codes(report) and not report.ok
    fixed = check_dataset("folder", root, labels=LabelConvention(label_map=((255, 1),)), workers=0, progress=False)
    assert fixed.ok and fixed.diagnoses == []
    assert check(capsys, root, "--label-map", "255:1")[0] == 0


def test_void_label_at_k_gets_ignore_index_k(tmp_path, capsys):
    root = write_set(tmp_path / "camvid", {"train": blobs(list(range(12)), 4)}, list(CAMVID))  # 11 classes + void 11
    code, out = check(capsys, root)
    assert code == 1
    assert "if 11 marks void/unlabelled pixels" in out and "pass --ignore-index 11" in out
    fixed = check_dataset("folder", root, labels=LabelConvention(ignore_index=11), workers=0, progress=False)
    assert fixed.ok, [d.line() for d in fixed.diagnoses]
    # unambiguous: class 0 is "background", or the void value is not K
    (root / "classes.txt").write_text("\n".join(["background", *CAMVID[1:]]) + "\n")
    report = check_dataset("folder", root, workers=0, progress=False)
    (d,) = [d for d in report.diagnoses if d.code == "void_label"]
    assert d.fix == "--ignore-index 11" and "--reduce-zero-label" not in d.message
    far = write_set(tmp_path / "far", {"train": blobs([0, 1, 2, 40])}, ["a", "b", "c"])
    code, out = check(capsys, far)
    assert code == 1 and "value 40 is neither a class id (3 classes: ids 0..2) nor ignore" in out
    assert "--ignore-index 40" in out


def test_ade_style_zero_other_gets_reduce_zero_label(tmp_path, capsys):
    names = ["wall", "building", "sky"]
    root = write_set(tmp_path / "ade", {"train": blobs([0, 1, 2, 3], 4)}, names)  # 0 = other, 1..3 = classes
    code, out = check(capsys, root)
    assert code == 1
    assert "if 0 means 'other' and 1..3 are the classes (ADE20K style), pass --reduce-zero-label" in out
    fixed = check_dataset("folder", root, labels=LabelConvention(reduce_zero_label=True), workers=0, progress=False)
    assert fixed.ok, [d.line() for d in fixed.diagnoses]
    ones = write_set(tmp_path / "ones", {"train": blobs([1, 2, 3], 4)}, names)  # ids from 1, no 0 at all
    report = check_dataset("folder", ones, workers=0, progress=False)
    (d,) = [d for d in report.diagnoses if d.code == "ids_from_one"]
    assert d.fix == "--reduce-zero-label" and "ids start at 1" in d.message


def test_rgb_colour_masks_list_their_colours_and_need_a_palette(tmp_path, capsys):
    colours = [(0, 0, 0), (128, 64, 128), (0, 0, 142)]
    masks = []
    for i in range(3):
        m = np.zeros((24, 30, 3), np.uint8)
        for j, c in enumerate(np.roll(np.array(colours), i, axis=0)):
            m[j * 8 : (j + 1) * 8] = c
        masks.append(m)
    root = write_set(tmp_path / "cvat", {"train": masks})
    template = tmp_path / "palette.csv"
    code, out = check(capsys, root, "--write-palette", str(template))
    assert code == 1
    assert "3 of 3 masks are RGB colour images with 3 distinct colours" in out
    for c in ("(0,0,0)", "(128,64,128)", "(0,0,142)"):
        assert c in out
    assert "pass --palette FILE" in out
    rows = template.read_text().splitlines()
    assert rows[0] == "name,r,g,b" and rows[1] == "class_0,0,0,0" and len(rows) == 4
    template.write_text("background,0,0,0\nroad,128,64,128\ncar,0,0,142\n")
    code, out = check(capsys, root, "--palette", str(template))
    assert code == 0, out
    assert "3 classes" in out and "road" in out
    template.write_text("background,0,0,0\nroad,128,64,128\n")  # car's colour missing
    code, out = check(capsys, root, "--palette", str(template))
    assert code == 1
    assert "1 mask colours are not in the palette file" in out and str(template) in out and "(0,0,142)" in out


def test_dominant_class_suggests_class_weights(tmp_path, capsys):
    masks = []
    for _ in range(3):
        m = np.zeros((40, 40), np.uint8)
        m[:2, :2] = 1  # 4 of 1600 pixels
        m[-1, -3:] = 2
        masks.append(m)
    root = write_set(tmp_path / "imb", {"train": masks}, ["background", "crack", "stain"])
    code, out = check(capsys, root)
    assert code == 0  # a warning, not a mistake: the data is right, only unbalanced
    assert "class 0 'background' covers 99.6% of the labelled pixels of 'train': pass --class-weights auto" in out
    report = check_dataset("folder", root, workers=0, progress=False)
    counts = report.splits["train"].pixel_counts[:3]
    assert counts == [3 * (1600 - 7), 12, 9]
    assert report.class_weights == pytest.approx(class_weights(counts).round(4).tolist())
    # what training's class weights would count: the masks alone, in worker processes
    train = build_dataset("folder", root, "train")
    assert class_pixel_counts(train, workers=2, progress=False).tolist() == counts
    assert "ENet: 1/ln(1.02 + p)" in out


def test_binary_0_1_masks_with_too_many_classes_listed(tmp_path, capsys):
    root = write_set(tmp_path / "d", {"train": blobs([0, 1])}, ["background", "a", "b", "c", "d"])
    code, out = check(capsys, root)
    assert code == 1
    assert "3 of 5 classes never occur in the 'train' split" in out
    assert "the masks hold only 0, 1: is classes.txt for another dataset?" in out
    one = write_set(tmp_path / "one", {"train": blobs([0, 1])}, ["object"])
    code, out = check(capsys, one)
    assert code == 1 and "masks hold 0 and 1 but classes.txt lists one class ('object'): list both" in out


def test_missing_classes_txt_reports_the_values(tmp_path, capsys):
    root = write_set(tmp_path / "d", {"train": blobs([0, 1, 4])})
    code, out = check(capsys, root)
    assert code == 1
    assert "no classes.txt" in out and "0, 1, 4" in out and "(0..4, so 5 lines)" in out


# ---------------------------------------------------------------------------------------------- the report
def test_report_counts_files_modes_sizes_and_channel_statistics(tmp_path, capsys):
    root = write_set(
        tmp_path / "d",
        {"train": blobs([0, 1, 2], 4, size=(20, 30)) + blobs([0, 1, 2], 1, size=(40, 50)), "val": blobs([0, 1, 2], 2)},
        ["a", "b", "c"],
    )
    images, masks = root / "images" / "train", root / "masks" / "train"
    (masks / "1.png").unlink()  # an image without its mask
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "stray.png")  # a mask without its image
    (images / "2.png").write_bytes((images / "2.png").read_bytes()[:60])  # truncated
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(masks / "3.png")  # size mismatch
    palette_png = Image.fromarray(np.ones((24, 32), np.uint8), mode="L").convert("P")
    palette_png.putpalette([0, 0, 0, 255, 0, 0] * 128)
    palette_png.save(root / "masks" / "val" / "0.png")  # VOC-style palette PNG: the indices are the ids
    report = check_dataset("folder", root, workers=0, progress=False)
    train, val = report.splits["train"], report.splits["val"]
    assert (train.images, train.scanned, train.readable) == (5, 4, 2)
    assert train.missing_masks == ["images/train/1.png"] and train.orphan_masks == ["stray.png"]
    assert len(train.unreadable) == 1 and "2.png" in train.unreadable[0]
    assert len(train.size_mismatches) == 1 and "mask is 30x21 but image 3.png is 30x20" in train.size_mismatches[0]
    assert train.size_min == (20, 30) and train.size_max == (40, 50)
    assert val.mask_modes == {"P": 1, "L": 1} and val.values[1][1] == 2  # value 1 in both val masks
    assert {"images_without_mask", "masks_without_image", "unreadable_files", "size_mismatches"} <= codes(report)
    # exact channel statistics of the readable training images
    pixels = np.concatenate([np.asarray(Image.open(images / n)).reshape(-1, 3) for n in ("0.png", "4.png")]).astype(
        np.float64
    )
    assert train.mean == pytest.approx(pixels.mean(0), abs=1e-3)
    assert train.std == pytest.approx(pixels.std(0), abs=1e-3)
    code, out = check(capsys, root)
    assert code == 1
    assert "1 images without a mask" in out and "1 masks without an image" in out and "stray.png" in out


def test_parallel_workers_give_the_same_report_and_json_is_complete(tmp_path, capsys):
    root = write_set(tmp_path / "d", {"train": blobs([0, 1, 255], 12), "val": blobs([0, 1], 5)}, ["a", "b"])
    serial = check_dataset("folder", root, workers=0, progress=False)
    parallel = check_dataset("folder", root, workers=2, progress=False)
    for name in ("train", "val"):
        a, b = serial.splits[name], parallel.splits[name]
        assert (a.values, a.pixel_counts, a.image_counts, a.mean, a.std) == (
            b.values,
            b.pixel_counts,
            b.image_counts,
            b.mean,
            b.std,
        )
    out_file = tmp_path / "report.json"
    assert main(["data", "check", "--data-root", str(root), "--no-progress", "--json", str(out_file)]) == 0
    data = json.loads(out_file.read_text())
    assert data["ok"] is True and data["num_classes"] == 2 and set(data["splits"]) == {"train", "val"}
    assert data["splits"]["train"]["values"]["255"] == [int(serial.splits["train"].values[255][0]), 12]
    assert data["class_weights"] == serial.class_weights and data["weight_method"] == "enet"
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    root = write_set(tmp_path / "d", {"train": blobs([0, 1])}, ["a", "b"])
    for argv, needle in (
        (["--data-root", str(tmp_path / "nowhere")], "does not exist"),
        (["--data-root", str(root), "--label-map", "x"], "--label-map 'x'"),
        (["--data-root", str(root), "--ignore-index", "-1"], "--ignore-index -1 is outside 0..255"),
        (["--data-root", str(root), "--split", "test"], "no split 'test'"),
        (["--data-root", str(root), "--json", str(tmp_path / "no" / "r.json")], "its folder does not exist"),
        (["--data-root", str(root), "--palette", str(tmp_path / "none.csv")], "none.csv: no such file"),
    ):
        assert main(["data", "check", "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_class_weight_formulas():
    counts = [900, 90, 10, 0]
    p = np.array([0.9, 0.09, 0.01])
    np.testing.assert_allclose(class_weights(counts)[:3], 1 / np.log(1.02 + p))
    assert class_weights(counts)[3] == 0.0
    np.testing.assert_allclose(class_weights(counts, "median")[:3], [90 / 900, 1.0, 9.0])
    np.testing.assert_allclose(class_weights(counts, "inverse")[:3], [1000 / 2700, 1000 / 270, 1000 / 30])
    assert class_weights([0, 0]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="unknown method 'x'"):
        class_weights(counts, "x")


def test_splits_of_each_layout(tmp_path):
    root = write_set(tmp_path / "d", {"train": blobs([0]), "val": blobs([0])}, ["a"])
    assert dataset_splits("folder", root) == ["train", "val"]
    voc = tmp_path / "VOC2012" / "ImageSets" / "Segmentation"
    voc.mkdir(parents=True)
    (tmp_path / "VOC2012" / "JPEGImages").mkdir()
    for s in ("train", "val", "trainval"):
        (voc / f"{s}.txt").write_text("")
    assert dataset_splits("voc", tmp_path) == ["train", "trainval", "val"]


# ------------------------------------------------------------------------------------- the fix, end to end
def binary_objects(root: Path, n_train: int = 16, n_val: int = 4, size: int = 64) -> Path:
    """Red rectangles on blue-grey noise, masks saved as 0/255 (the way many tools write binary masks)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            h, w = rng.integers(16, 32, 2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            mask[y : y + h, x : x + w] = 255
            image = np.where(mask[..., None] > 0, [220, 60, 40], [40, 60, 90]) + rng.integers(-25, 25, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\nobject\n")
    return root


def test_binary_masks_train_with_the_suggested_flag_and_the_model_keeps_it(tmp_path, capsys):
    root = binary_objects(tmp_path / "data")
    code, out = check(capsys, root)
    assert code == 1 and "pass --label-map 255:1" in out  # the unfixed set is flagged

    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    argv = ["train", "--model", str(model), "--dataset", "folder", "--data-root", str(root), "--out", str(run)]
    argv += ["--crop", "64", "--scale", "64x64", "--ratio-range", "0.75,1.5", "--batch-size", "4", "--num-workers"]
    argv += ["0", "--warmup-iters", "2", "--lr", "3e-3", "--log-every", "10", "--eval-every", "0", "--iters", "20"]
    assert main([*argv, "--label-map", "255:1"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / "final" / "metrics.json").read_text())
    assert metrics["per_class"]["object"]["IoU"] >= 0.5, metrics["per_class"]
    assert yaml.safe_load((run / "config.yaml").read_text())["label_map"] == "255:1"
    saved = json.loads((run / "final" / "config.json").read_text())
    assert saved["segformer_labels"]["label_map"] == [[255, 1]]

    # eval without flags applies the stored mapping (without it, the object pixels would be ignored)
    out = tmp_path / "eval"
    evaluate = ["eval", str(run / "final"), "--dataset", "folder", "--data-root", str(root), "--out", str(out)]
    assert main([*evaluate, "--num-workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "labels: --label-map 255:1" in printed
    again = json.loads((out / "metrics.json").read_text())
    assert again["per_class"]["object"]["IoU"] == pytest.approx(metrics["per_class"]["object"]["IoU"], abs=1e-6)

    # predict without flags: --raw-labels writes the masks' own 0/255 values
    pred = tmp_path / "pred"
    predict = ["predict", str(run / "final"), str(root / "images" / "val"), "--out", str(pred), "--no-progress"]
    assert main([*predict, "--raw-labels"]) == 0
    assert "labels: --label-map 255:1 (NAME.png in these raw values)" in capsys.readouterr().out
    written = np.asarray(Image.open(pred / "000.png"))
    truth = np.asarray(Image.open(root / "masks" / "val" / "000.png"))
    assert set(np.unique(written)) <= {0, 255} and (written == truth).mean() > 0.9


def test_training_the_unfixed_binary_set_says_the_object_is_never_trained(tmp_path, caplog):
    """Without `data check` first, training still says out loud that a class never appears in its labels."""
    from segformer.training.build import warn_unseen_classes

    root = binary_objects(tmp_path / "data")
    with caplog.at_level("WARNING", logger="segformer"):
        assert warn_unseen_classes(build_dataset("folder", root, "train")) == ["object"]
    assert "object never appear" in caplog.text and "segformer data check" in caplog.text
    caplog.clear()
    fixed = build_dataset("folder", root, "train", labels=LabelConvention(label_map=((255, 1),)))
    with caplog.at_level("WARNING", logger="segformer"):
        assert warn_unseen_classes(fixed) == []
    assert "never appear" not in caplog.text


# ------------------------------------------------------------------------------------------ the rules table
# Each case: masks -> (code, fix) of the finding the rule gives. The messages were recorded from the ladder of rules
# before it became a table (git b18b4a0), and they pin the wording users act on.
RULE_CASES = {
    "binary_one_class": ([0, 255], ["thing"], "masks hold 0 and 255 but there is one class ('thing')"),
    "too_few_class_names": ([0, 1, 2, 3, 4], ["a", "b", "c"], "list all 5 classes (classes.txt), or map the extra "
                            "values 3, 4 to ignore with --label-map 3:255,4:255"),
    "unknown_values": ([0, 1, 7, 9], ["a", "b", "c"], "values 7, 9 are neither class ids (3 classes: ids 0..2) nor "
                       "ignore (255): map them with --label-map 7:255,9:255 (to ignore)"),
    "all_ignored": ([255], ["a", "b"], "every labelled pixel maps to ignore (255): nothing would be trained"),
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(RULE_CASES))
def test_each_rule_names_the_problem(tmp_path, code):
    values, names, message = RULE_CASES[code]
    root = write_set(tmp_path / code, {"train": blobs(values)}, names)
    report = check_dataset("folder", root, workers=0, progress=False)
    (d,) = [d for d in report.diagnoses if d.code == code]
    assert message in d.message and d.severity == "problem" and not report.ok


def test_notes_on_modes_and_16_bit_values(tmp_path):
    root = write_set(tmp_path / "m", {"train": blobs([0, 1]), "val": blobs([0], 1)}, ["a", "b", "c"])
    for path in (root / "images" / "train").iterdir():
        Image.open(path).convert("L").save(path)
    for i, mask in enumerate(blobs([0, 1])):
        Image.fromarray(mask.astype(np.uint16) * 300).save(root / "masks" / "train" / f"{i}.png")
    report = check_dataset("folder", root, workers=0, progress=False)
    found = {(d.code, d.severity, d.split): d.message for d in report.diagnoses}
    assert found[("values_beyond_8_bit", "problem", None)].startswith("masks hold values up to 300 (1 values above")
    assert found[("image_mode", "note", None)] == "3 images are greyscale (repeated to 3 channels)"
    assert found[("mask_16_bit", "note", None)] == "3 masks are I;16 (16/32-bit); values are read as ids"
    assert [d.code for d in report.diagnoses][-2:] == ["image_mode", "mask_16_bit"]  # notes come last


def test_rules_run_in_table_order_split_by_split_and_a_new_rule_is_one_row():
    from collections import Counter

    from segformer.data.check import RULES, DataReport, Finding, Rule, SplitReport
    from segformer.data.check.rules import Facts, run_rules

    splits = {
        "train": SplitReport("train", missing_masks=["a.png"]),
        "val": SplitReport("val", error="no such folder", missing_masks=["b.png"], unreadable=["c.png"]),
    }
    report = DataReport("folder", "root", {}, 2, ["x", "y"], splits, [])
    empty = np.zeros(256, np.int64)
    facts = Facts(report, LabelConvention(), False, Counter(), Counter(), Counter(), {}, empty, True, {})

    def per_split(f):
        return Finding("mine", f"looked at {f.split}", None, "note", f.split)

    def once(f):
        return Finding("once", "looked once", None, "warning")

    found = run_rules(facts, (*RULES, Rule(per_split, per_split=True), Rule(once)))
    assert [(d.code, d.split) for d in found] == [
        ("images_without_mask", "train"),
        ("split_unreadable", "val"),
        ("images_without_mask", "val"),
        ("unreadable_files", "val"),
        ("mine", "train"),
        ("mine", "val"),
        ("once", None),
    ]
    assert found[-1].line() == "warning: looked once" and found[2].line().startswith("error: [val] 1 images without")


def test_split_aliases_are_accepted_for_every_layout(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i, mask in enumerate(blobs([0, 1, 2], 2)):
            (base / "images" / split).mkdir(parents=True, exist_ok=True)
            (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(base / "images" / split / f"{i}.jpg")
            Image.fromarray(mask).save(base / "annotations" / split / f"{i}.png")
    report = check_dataset("ade20k", tmp_path, ["train"], workers=0, progress=False)  # "train" is "training"
    assert list(report.splits) == ["train"] and report.splits["train"].images == 2
    assert report.class_names is not None and report.num_classes == 150
    with pytest.raises(ValueError, match=r"no split 'test' \(splits: training, validation\)"):
        check_dataset("ade20k", tmp_path, ["test"], workers=0, progress=False)
