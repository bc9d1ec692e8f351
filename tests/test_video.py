"""`segformer predict clip.mp4`: an overlay video at the same frame rate and size, per-frame label PNGs equal to
predictions on the decoded frames, and bad input (not a video, an unreadable frame, no PyAV) in one line."""

from __future__ import annotations

import builtins
from fractions import Fraction

import av  # the video extra (in dev, so CI runs these tests)
import numpy as np
import pytest
import torch
from PIL import Image

from segformer import Segmenter, create_model, load_model
from segformer.cli import main

pytestmark = pytest.mark.video


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("b0", num_classes=3, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():  # a classifier with real margins, so the label maps are not all one class
        model.head.classifier.weight.mul_(20)
    return model.save_pretrained(tmp_path_factory.mktemp("weights"))


def scene(i: int, h: int, w: int) -> np.ndarray:
    """A bright square moving over a two-tone background."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (40, 90, 160)
    image[:, w // 2 :] = (150, 120, 60)
    y, x = 4 + 2 * i, 6 + 5 * i
    image[y : y + 14, x : x + 14] = (250, 250, 250)
    return image


def write_video(path, frames: int = 7, h: int = 48, w: int = 64, fps: int = 12, codec: str = "libx264") -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = w, h
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(scene(i, h, w), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def decode(path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


def test_video_overlay_and_per_frame_labels(weights, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    write_video(clip)
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--labels", "--no-progress"]) == 0
    assert "wrote 1 overlay videos (7 frames)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["clip_labels", "clip_overlay.mp4"]  # no temporaries left
    frames, rate = decode(out / "clip_overlay.mp4")
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3) and rate == 12
    # The codec is lossy: the reference is the model on the frames as decoded from the input clip.
    inputs, _ = decode(clip)
    segmenter = Segmenter(load_model(weights))
    pngs = sorted((out / "clip_labels").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(7)]
    for image, png in zip(inputs, pngs, strict=True):
        expected = segmenter(image)
        assert len(np.unique(expected)) > 1
        np.testing.assert_array_equal(np.asarray(Image.open(png)), expected)


def test_odd_sized_video_keeps_label_size(weights, tmp_path):
    clip = tmp_path / "odd.mkv"
    write_video(clip, frames=3, h=45, w=63, fps=5, codec="mjpeg")  # 4:2:0 H.264 needs even sides: padded by one
    assert main(["predict", str(weights), str(clip), "--out", str(tmp_path / "o"), "--labels", "--no-progress"]) == 0
    frames, rate = decode(tmp_path / "o" / "odd_overlay.mp4")
    assert len(frames) == 3 and frames[0].shape == (46, 64, 3) and rate == 5
    assert np.asarray(Image.open(tmp_path / "o" / "odd_labels" / "000002.png")).shape == (45, 63)


def test_not_a_video(weights, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_text("this is not a video")
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--labels", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{clip}: not a readable video (")
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_frame_leaves_nothing_behind(weights, tmp_path, capsys):
    clip = tmp_path / "broken.mkv"
    write_video(clip, frames=5, codec="mjpeg")
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG frames
    assert len(starts) == 5
    data[starts[2] : starts[3] - 40] = bytes(starts[3] - 40 - starts[2])  # frame 2's image data zeroed
    clip.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["predict", str(weights), str(clip), "--out", str(out), "--labels", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{clip}: frame 2 cannot be decoded (")
    assert not any(out.iterdir())  # neither the overlay video nor the label folder, not even temporary ones


def test_video_without_pyav(weights, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av" or name.startswith("av."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert main(["predict", str(weights), str(clip), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segformer predict: error: video needs PyAV: pip install 'segformer[video]' (or av)"]
