"""Label conventions: the mapping order, flags and palette files, the datasets that apply them, models that keep
them, and the one-line errors of bad label options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, tiny_model_file
from segformer import create_model, load_model
from segformer.cli import main
from segformer.data import LabelConvention, LabelError, build_dataset, parse_label_map, read_palette
from segformer.imageio import ImageReadError
from segformer.model.config import SegFormerConfig

COLOURS = {"background": (0, 0, 0), "road": (128, 64, 128), "car": (0, 0, 142)}


def write_palette(path: Path, rows: dict[str, tuple[int, int, int]], header: bool = True) -> Path:
    lines = (["name,r,g,b"] if header else []) + [f"{n},{r},{g},{b}" for n, (r, g, b) in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def colour_folder(
    root: Path, colours: list[tuple[int, int, int]], split: str = "val", n: int = 2, size: tuple[int, int] = (24, 30)
) -> Path:
    """RGB colour masks (as CVAT/Roboflow export them): stripes of the given colours."""
    rng = np.random.default_rng(0)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        mask = np.zeros((h, w, 3), np.uint8)
        for j, c in enumerate(colours):
            mask[j * h // len(colours) : (j + 1) * h // len(colours)] = c
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ the mapping
def test_default_convention_keeps_ids_and_255():
    raw = np.array([[0, 1, 2, 255]], np.uint8)
    labels = LabelConvention()
    assert labels.is_default and labels.flags() == ""
    np.testing.assert_array_equal(labels.apply(raw), raw)
    assert labels.lut.dtype == np.uint8 and labels.lut.shape == (256,)


def test_reduce_zero_label_is_the_ade20k_rule():
    raw = np.array([0, 1, 2, 150, 254, 255], np.uint8)
    out = LabelConvention(reduce_zero_label=True).apply(raw[None])[0]
    # mmseg / transformers: 0 -> 255, then -1, then 254 -> 255 (so 255 stays ignore)
    assert out.tolist() == [255, 0, 1, 149, 253, 255]
    from segformer.data.catalog import ADE20K_REDUCE_ZERO_LABEL

    np.testing.assert_array_equal(LabelConvention(reduce_zero_label=True).lut, ADE20K_REDUCE_ZERO_LABEL)


def test_mapping_order_label_map_then_reduce_then_ignore_index():
    raw = np.array([[0, 1, 2, 3, 11, 255]], np.uint8)
    assert LabelConvention(label_map=((255, 1),)).apply(raw).tolist() == [[0, 1, 2, 3, 11, 1]]
    # the map is applied at once, not chained: 1 -> 2 and 2 -> 1 swap
    assert LabelConvention(label_map=((1, 2), (2, 1))).apply(raw).tolist() == [[0, 2, 1, 3, 11, 255]]
    assert LabelConvention(ignore_index=11).apply(raw).tolist() == [[0, 1, 2, 3, 255, 255]]
    # label map first (3 -> 0), then reduce zero label (0 -> ignore, k -> k-1), then ignore index (on the result)
    both = LabelConvention(label_map=((3, 0),), reduce_zero_label=True, ignore_index=10)
    assert both.apply(raw).tolist() == [[255, 0, 1, 255, 255, 255]]
    assert both.flags() == "--label-map 3:0 --reduce-zero-label --ignore-index 10"


def test_encode_writes_ids_back_in_the_masks_own_values():
    binary = LabelConvention(label_map=((255, 1),))
    assert binary.encode(np.array([[0, 1, 255]])).tolist() == [[0, 255, 255]]
    ade = LabelConvention(reduce_zero_label=True)
    assert ade.encode(np.array([[0, 1, 149, 255]])).tolist() == [[1, 2, 150, 0]]
    void = LabelConvention(ignore_index=11)
    assert void.encode(np.array([[0, 10, 255]])).tolist() == [[0, 10, 11]]
    for labels in (ade, void):  # (0/255 binary masks have no value left for ignore)
        ids = np.array([[0, 1, 2, 255]], np.uint8)
        np.testing.assert_array_equal(labels.apply(labels.encode(ids)), ids)


def test_label_map_parsing_and_errors():
    assert parse_label_map("255:1") == ((255, 1),)
    assert parse_label_map(" 1:0, 2:0 ,3:1") == ((1, 0), (2, 0), (3, 1))
    for bad, needle in (
        ("255-1", "'255-1' is not FROM:TO"),
        ("a:b", "is not FROM:TO"),
        ("1:2:3", "is not FROM:TO"),
        ("300:1", "outside 0..255"),
        (",", "no pairs"),
    ):
        with pytest.raises(LabelError, match=needle) as e:
            parse_label_map(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(LabelError, match="maps the value 1 twice"):
        LabelConvention.from_options(label_map="1:0,1:2")


@pytest.mark.parametrize("value", [-1, 256, 1000])
def test_ignore_index_outside_0_255_is_an_error(value):
    with pytest.raises(LabelError, match=rf"--ignore-index {value} is outside 0..255"):
        LabelConvention(ignore_index=value)


def test_round_trip_through_dicts_and_model_configs(tmp_path):
    palette = write_palette(tmp_path / "p.csv", COLOURS)
    labels = LabelConvention.from_options(ignore_index=11, label_map="255:1", palette=palette)
    assert LabelConvention.from_dict(json.loads(json.dumps(labels.to_dict()))) == labels
    config = SegFormerConfig(num_classes=3, labels=labels.to_dict())
    assert LabelConvention.from_dict(config.labels) == labels and hash(config)
    assert SegFormerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config

    model = create_model("b0", num_classes=3, **TINY)
    model.config = model.config.replace(labels=labels.to_dict())
    folder = model.save_pretrained(tmp_path / "m")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["segformer_labels"]["label_map"] == [[255, 1]] and saved["segformer_labels"]["palette"][1][0] == "road"
    assert LabelConvention.from_dict(load_model(folder).config.labels) == labels


# ------------------------------------------------------------------------------------------------ palettes
def test_palette_files_csv_and_cvat_labelmap(tmp_path):
    csv = write_palette(tmp_path / "classes.csv", COLOURS)
    assert read_palette(csv) == (("background", 0, 0, 0), ("road", 128, 64, 128), ("car", 0, 0, 142))
    no_header = write_palette(tmp_path / "plain.csv", COLOURS, header=False)
    assert read_palette(no_header) == read_palette(csv)
    cvat = tmp_path / "labelmap.txt"
    cvat.write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ncar:0,0,142::\n")
    assert read_palette(cvat) == read_palette(csv)
    for text, needle in (
        ("a,1,2\n", r"bad\.csv:1: expected 'name,r,g,b'"),
        ("a,1,2,3\nb,1,2,x\n", r"bad\.csv:2: r, g, b must be integers"),
        ("a,1,2,300\n", r"bad\.csv:1: r, g, b must be in 0..255"),
        ("a,1,2,3\nb,1,2,3\n", r"colour \(1, 2, 3\) is given to both 'a' and 'b'"),
        ("\n# nothing\n", "no colours"),
    ):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(LabelError, match=needle):
            read_palette(tmp_path / "bad.csv")
    with pytest.raises(LabelError, match=r"--palette .*missing\.csv: no such file"):
        read_palette(tmp_path / "missing.csv")


def test_colour_masks_through_a_palette_file(tmp_path):
    palette = write_palette(tmp_path / "p.csv", COLOURS)
    root = colour_folder(tmp_path / "data", [(0, 0, 0), (128, 64, 128), (0, 0, 142)])
    ds = build_dataset("folder", root, "val", labels=LabelConvention.from_options(palette=palette))
    assert ds.class_names == ("background", "road", "car")  # no classes.txt: the palette's names
    np.testing.assert_array_equal(ds.palette, [[0, 0, 0], [128, 64, 128], [0, 0, 142]])  # overlay colours
    _, mask, _ = ds.load(0)
    assert mask[0, 0] == 0 and mask[10, 0] == 1 and mask[-1, 0] == 2
    # a void colour row ignored by --ignore-index, and the names of the rows that stay classes
    labels = LabelConvention.from_options(palette=write_palette(tmp_path / "v.csv", {**COLOURS, "void": (9, 9, 9)}),
                                          ignore_index=3)  # fmt: skip
    assert labels.class_names_from_palette() == ("background", "road", "car")
    np.testing.assert_array_equal(labels.encode(np.array([[1, 255]])), [[[128, 64, 128], [9, 9, 9]]])


def test_colour_missing_from_the_palette_names_colour_and_file(tmp_path):
    palette = write_palette(tmp_path / "p.csv", {"background": (0, 0, 0), "road": (128, 64, 128)})
    root = colour_folder(tmp_path / "data", [(0, 0, 0), (128, 64, 128), (250, 170, 30)])
    ds = build_dataset("folder", root, "val", labels=LabelConvention.from_options(palette=palette))
    with pytest.raises(ImageReadError, match=r"0\.png: colour \(250, 170, 30\) .* is not in the palette file .*p\.csv"):
        ds.load(0)


def test_grey_rgb_masks_read_as_ids_and_colour_masks_need_a_palette(tmp_path):
    root = colour_folder(tmp_path / "grey", [(0, 0, 0), (1, 1, 1)])
    (root / "classes.txt").write_text("a\nb\n")
    assert set(np.unique(build_dataset("folder", root, "val").load(0)[1])) == {0, 1}
    root = colour_folder(tmp_path / "colour", [(0, 0, 0), (128, 64, 128)])
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ImageReadError, match=r"colour mask but no palette; pass --palette FILE"):
        build_dataset("folder", root, "val").load(0)


def test_every_layout_applies_the_convention_after_its_own_mapping(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(base / "images" / "validation" / "a.jpg")
    Image.fromarray(np.array([[0, 1, 2, 3]] * 4, np.uint8)).save(base / "annotations" / "validation" / "a.png")
    plain = build_dataset("ade20k", base, "validation").load(0)[1]
    assert plain[0].tolist() == [255, 0, 1, 2]
    extra = build_dataset("ade20k", base, "validation", labels=LabelConvention(ignore_index=1)).load(0)[1]
    assert extra[0].tolist() == [255, 0, 255, 2]
    with pytest.raises(ValueError, match="reduces the zero label already"):
        build_dataset("ade20k", base, "validation", labels=LabelConvention(reduce_zero_label=True))


def test_a_value_beyond_the_classes_names_the_flags(tmp_path):
    root = tmp_path / "d"
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "train" / "x.png")
    Image.fromarray(np.array([[0, 1, 2, 3]] * 4, np.uint8)).save(root / "masks" / "train" / "x.png")
    ds = build_dataset("folder", root, "train", labels=LabelConvention(label_map=((2, 0),)))
    with pytest.raises(ImageReadError, match=r"x\.png: mask value 3 is >= num_classes 2.*segformer data check"):
        ds.load(0)


# ---------------------------------------------------------------------------------------------- CLI errors
def test_bad_label_options_fail_with_one_line_each(tmp_path, capsys):
    palette = write_palette(tmp_path / "p.csv", {"background": (0, 0, 0), "road": (128, 64, 128)})
    root = colour_folder(tmp_path / "data", [(0, 0, 0), (128, 64, 128), (250, 170, 30)])
    weights = tmp_path / "w"
    create_model("b0", num_classes=2, **TINY).save_pretrained(weights)
    out = tmp_path / "eval"
    base = ["eval", str(weights), "--dataset", "folder", "--data-root", str(root), "--out", str(out)]
    base += ["--num-workers", "0", "--no-progress"]

    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert all(n in err[0] for n in needles), err[0]
        assert not out.exists()  # nothing written

    fails([*base, "--label-map", "255-1"], "--label-map '255-1'", "FROM:TO")
    fails([*base, "--ignore-index", "300"], "--ignore-index 300 is outside 0..255")
    fails([*base, "--palette", str(palette)], "colour (250, 170, 30)", str(palette))
    train = ["train", "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "run"), "--iters", "1"]
    fails([*train, "--ignore-index", "256"], "ignore_index=256 is outside 0..255")
    fails([*train, "--label-map", "1:2:3"], "--label-map '1:2:3'")
    assert not (tmp_path / "run").exists()


def test_a_model_trained_with_a_palette_keeps_its_colours(tmp_path, capsys):
    palette = write_palette(tmp_path / "p.csv", COLOURS)
    root = colour_folder(tmp_path / "data", list(COLOURS.values()), split="train", n=4, size=(40, 48))
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    argv = ["train", "--model", str(model), "--dataset", "folder", "--data-root", str(root), "--out", str(run)]
    argv += ["--crop", "32", "--scale", "48x40", "--batch-size", "2", "--num-workers", "0", "--iters", "2"]
    assert main([*argv, "--eval-every", "0", "--val-split", "none", "--palette", str(palette)]) == 0
    stored = load_model(run / "final").config
    assert stored.class_names == ("background", "road", "car") and stored.labels["palette_file"] == str(palette)

    pred = tmp_path / "pred"
    images = root / "images" / "train"
    assert main(["predict", str(run / "final"), str(images), "--out", str(pred), "--no-progress"]) == 0
    assert f"labels: --palette {palette}" in capsys.readouterr().out
    with Image.open(pred / "0.png") as png:
        assert png.mode == "P" and png.getpalette()[:9] == [0, 0, 0, 128, 64, 128, 0, 0, 142]  # the CSV's colours
    raw = tmp_path / "raw"
    assert main(["predict", str(run / "final"), str(images / "0.jpg"), "--out", str(raw), "--raw-labels"]) == 0
    colours = {tuple(c) for c in np.asarray(Image.open(raw / "0.png").convert("RGB")).reshape(-1, 3).tolist()}
    assert colours <= set(COLOURS.values())  # the annotation tool's format
