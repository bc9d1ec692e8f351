"""Folder prediction with reader/writer processes and batches by model input size (`segformer.inference.files`),
and split across torchrun processes: every label map equals `Segmenter(model)(image)` of that file alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer import InferenceOptions, Segmenter, load_model
from segformer.cli import main
from segformer.imageio import read_image
from segformer.inference.files import predict_files

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
# (H, W): the first three share the model input size at scale (64, 48); the last has its own.
SIZES = [(60, 80), (75, 100), (48, 64), (60, 80), (50, 90)]


def photos(root: Path, sizes=SIZES, broken: bool = True) -> Path:
    """JPEGs of mixed sizes (two with the same name in different folders) and, with `broken`, one corrupt file."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        folder = root / ("sub" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i // 2}.jpg", quality=95)
    if broken:
        (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def labels_of(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.mark.parametrize(
    ("options", "workers"),
    [(InferenceOptions(scale=(64, 48), batch_size=2), 2), (InferenceOptions(scale=(64, 48), flip=True), 1)],
    ids=["whole-2-workers", "tta-1-worker"],
)
def test_folder_labels_equal_one_image_at_a_time(weights, tmp_path, options, workers):
    model = load_model(weights)
    inputs = []
    model.register_forward_hook(lambda m, args, out: inputs.append(tuple(args[0].shape)))
    src, out = photos(tmp_path / "src"), tmp_path / "out"
    failed = []
    segmenter, report = Segmenter(model, options), lambda name, reason: failed.append(name)
    summary = predict_files(segmenter, [src], out, palette=PALETTE, progress=False, num_workers=workers, report=report)
    assert failed == [str(src / "broken.jpg")] and summary.failed[0][0] == str(src / "broken.jpg")
    assert len(summary.written) == len(SIZES) == len(list(out.rglob("*.png")))
    reference = Segmenter(load_model(weights), options)
    for image in sorted(src.rglob("p*.jpg")):
        stem = out / image.relative_to(src).with_suffix("")
        expected = reference(image)
        np.testing.assert_array_equal(labels_of(stem.with_suffix(".png")), expected)
        with Image.open(f"{stem}_overlay.jpg") as overlay:
            assert overlay.size == read_image(image).shape[1::-1]
    assert not list(out.rglob("*.tmp"))
    if options.passes == 1:  # readers resized: three photos of different sizes went through in one batch of 2
        assert (2, 3, 48, 64) in inputs and len(inputs) < len(SIZES)


def test_an_interrupted_write_leaves_no_partial_file(weights, tmp_path, monkeypatch):
    src, out = photos(tmp_path / "src", SIZES[:2], broken=False), tmp_path / "out"
    real_save = Image.Image.save

    def save(self, fp, format=None, **kw):  # the overlay JPEG dies half-way: disk full
        if format == "JPEG":
            Path(fp).write_bytes(b"\xff\xd8 half")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, format, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    segmenter = Segmenter(load_model(weights), InferenceOptions())
    summary = predict_files(segmenter, [src], out, palette=PALETTE, progress=False, num_workers=0, report=print)
    assert summary.written == [] and len(summary.failed) == 2
    assert "could not write outputs" in summary.failed[0][1]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["p0.png", "p0.png"]  # complete PNGs only
    for png in out.rglob("p0.png"):
        assert labels_of(png).shape in SIZES[:2]


def _plus_ten(ids: np.ndarray) -> np.ndarray:
    """A label convention's `encode` for the test: class k is written as value k + 10."""
    return (ids + 10).astype(np.uint8)


def test_raw_values_are_written_by_the_writers_never_rewritten_afterwards(weights, tmp_path, monkeypatch):
    """`encode` (--raw-labels): each NAME.png is written once, already in the masks' values, so a run stopped
    half-way never leaves class-id PNGs behind; the overlay still shows the classes."""
    import segformer.inference.files

    src, out = photos(tmp_path / "src", SIZES[:3], broken=False), tmp_path / "out"
    writes = []
    real = segformer.inference.files.write_label_png
    monkeypatch.setattr(segformer.inference.files, "write_label_png", lambda *a: writes.append(a) or real(*a))
    segmenter = Segmenter(load_model(weights), InferenceOptions(scale=(64, 48)))
    summary = predict_files(segmenter, [src], out, palette=PALETTE, progress=False, num_workers=0, encode=_plus_ten)
    assert len(summary.written) == 3 and writes == []  # no class-id palette PNG was ever written
    for image in sorted(src.rglob("p*.jpg")):
        stem = out / image.relative_to(src).with_suffix("")
        with Image.open(stem.with_suffix(".png")) as png:
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), segmenter(image) + 10)


def test_a_single_file_is_predicted_in_this_process(weights, tmp_path, monkeypatch):
    """Worker processes only pay off when there is something to overlap: one file runs here (lower latency)."""
    import segformer.inference.files

    def no_processes(*args, **kwargs):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(segformer.inference.files, "ProcessPoolExecutor", no_processes)
    src = photos(tmp_path / "src", SIZES[:2], broken=False)
    segmenter = Segmenter(load_model(weights), InferenceOptions(scale=(64, 48)))
    summary = predict_files(segmenter, [src / "p0.jpg"], tmp_path / "one", palette=PALETTE, progress=False)
    assert len(summary.written) == 1
    with pytest.raises(AssertionError, match="worker process"):  # two files: the default starts writers
        predict_files(segmenter, [src], tmp_path / "two", palette=PALETTE, progress=False)


@pytest.mark.slow
def test_torchrun_splits_files_writes_each_once_and_fails_on_every_rank(weights, tmp_path):
    src = photos(tmp_path / "src")
    one, two = tmp_path / "one", tmp_path / "two"
    argv = ["predict", str(weights), str(src), "--scale", "64x48", "--no-progress", "--num-workers", "1"]
    assert main([*argv, "--out", str(one)]) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launch, "-m", "segformer", *argv, "--out", str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    for rank in (0, 1):  # torchrun lists every process that exited with an error
        assert f"rank      : {rank}" in proc.stderr or f"rank: {rank}" in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 5 label maps and overlays") == 1 and proc.stdout.count("1 failed") == 1
    assert proc.stderr.count("broken.jpg: ") == 1  # reported by the rank that had it, once
    files = sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file()) and len(files) == 10
    for png in one.rglob("*.png"):
        np.testing.assert_array_equal(labels_of(two / png.relative_to(one)), labels_of(png))
