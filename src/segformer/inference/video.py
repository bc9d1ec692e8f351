"""Video in, overlay video out: every frame through a `Segmenter`, blended with the class colours, encoded at the
input's frame rate; optionally one label PNG per frame (pixel values = class ids).

PyAV is the optional `video` extra (`pip install 'segformer[video]'`; its wheels bundle FFmpeg). Outputs are
written under temporary names and renamed when the whole video is done, so a clip that fails halfway (unreadable
frame, full disk) leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..imageio import write_label_png
from .segmenter import Segmenter

log = logging.getLogger("segformer")

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")
OVERLAY_SUFFIX = "_overlay.mp4"


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file (and the frame)."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av() -> Any:
    """The `av` module, or a one-line RuntimeError saying how to install it."""
    try:
        import av
    except ImportError:
        raise RuntimeError("video needs PyAV: pip install 'segformer[video]' (or av)") from None
    return av


@dataclass
class VideoSummary:
    """What `predict_video` wrote: the overlay video, and the folder of per-frame label PNGs (or None)."""

    source: Path
    video: Path
    labels: Path | None
    frames: int
    fps: Fraction
    size: tuple[int, int]  # (H, W)


def frame_rate(stream: Any) -> Fraction:
    """Frames per second of a PyAV video stream (average, else guessed, else base rate; 25 when none is known)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(25)


def read_frames(path: str | os.PathLike) -> tuple[Any, Any]:
    """(open container, its first video stream) or a VideoError naming the file."""
    av = require_av()
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def decoded_frames(container: Any, stream: Any, path: Path) -> Any:
    """RGB uint8 (H, W, 3) arrays of the stream in order; a VideoError names the frame that cannot be decoded."""
    av = require_av()
    index = 0
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"{path}: frame {index} cannot be decoded ({_reason(e)})") from None
        yield frame.to_ndarray(format="rgb24")
        index += 1


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _encoder(av: Any, path: Path, fps: Fraction, height: int, width: int) -> tuple[Any, Any]:
    container = av.open(str(path), mode="w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
    except (av.error.FFmpegError, ValueError):  # an FFmpeg build without x264
        stream = container.add_stream("mpeg4", rate=fps)
        stream.bit_rate = 8_000_000
    stream.width, stream.height = width + width % 2, height + height % 2  # 4:2:0 needs even sides
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1) / fps
    return container, stream


def predict_video(
    segmenter: Segmenter,
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    palette: np.ndarray,
    class_names: Sequence[str] | None = None,
    labels: bool = False,
    alpha: float = 0.5,
    legend: bool = True,
    progress: bool = True,
    stem: str | None = None,
) -> VideoSummary:
    """Segment every frame of the video at `path`; write OUT/STEM_overlay.mp4 (H.264, same frame rate and size;
    odd sides are padded by one pixel for 4:2:0) and, with `labels`, OUT/STEM_labels/NNNNNN.png per frame.

    `segmenter` is a `segformer.Segmenter` (its options decide scale and batching: frames go through in batches of
    its batch size). Raises VideoError (nothing written) for a file that is not a video or a frame that cannot be
    decoded.
    """
    from tqdm import tqdm

    from ..visualize import overlay

    av = require_av()
    path, out = Path(path), Path(out)
    stem = stem or path.stem
    container, stream = read_frames(path)
    fps = frame_rate(stream)
    total = stream.frames or None
    out.mkdir(parents=True, exist_ok=True)
    video_path = out / f"{stem}{OVERLAY_SUFFIX}"
    labels_dir = out / f"{stem}_labels" if labels else None
    video_tmp = out / f".{stem}{OVERLAY_SUFFIX}.tmp"
    labels_tmp = out / f".{stem}_labels.tmp" if labels else None
    batch_size = segmenter.options.batch_size
    writer = encoder = None
    count, size = 0, (0, 0)
    bar = tqdm(total=total, desc=path.name, unit="frame", disable=not progress)
    try:
        if labels_tmp is not None:
            shutil.rmtree(labels_tmp, ignore_errors=True)
            labels_tmp.mkdir()
        batch: list[np.ndarray] = []

        def flush() -> None:
            nonlocal writer, encoder, count, size
            maps = segmenter.predict_arrays(batch)
            for image, label_map in zip(batch, maps, strict=True):
                if writer is None:
                    size = image.shape[:2]
                    writer, encoder = _encoder(av, video_tmp, fps, *size)
                if image.shape[:2] != size:
                    h, w = image.shape[:2]
                    raise VideoError(f"{path}: frame {count} is {w}x{h}, not {size[1]}x{size[0]} as the first")
                picture = overlay(image, label_map, palette, class_names, alpha=alpha, legend=legend)
                if picture.shape[0] % 2 or picture.shape[1] % 2:
                    picture = np.pad(picture, ((0, picture.shape[0] % 2), (0, picture.shape[1] % 2), (0, 0)), "edge")
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = count
                for packet in encoder.encode(frame):
                    writer.mux(packet)
                if labels_tmp is not None:
                    write_label_png(labels_tmp / f"{count:06d}.png", label_map, palette)
                count += 1
            bar.update(len(batch))
            batch.clear()

        for image in decoded_frames(container, stream, path):
            if batch and (len(batch) >= batch_size or batch[0].shape != image.shape):
                flush()
            batch.append(image)
        if batch:
            flush()
        if writer is None:
            raise VideoError(f"{path}: holds no frames")
        for packet in encoder.encode():
            writer.mux(packet)
        writer.close()
        writer = None
        os.replace(video_tmp, video_path)
        if labels_tmp is not None and labels_dir is not None:
            if labels_dir.is_dir():
                shutil.rmtree(labels_dir)
            os.replace(labels_tmp, labels_dir)
    except OSError as e:
        raise VideoError(f"{path}: could not write under {out} ({_reason(e)})") from None
    finally:
        bar.close()
        container.close()
        if writer is not None:
            writer.close()
        if video_tmp.exists():
            video_tmp.unlink()
        if labels_tmp is not None and labels_tmp.exists():
            shutil.rmtree(labels_tmp)
    return VideoSummary(path, video_path, labels_dir, count, fps, (int(size[0]), int(size[1])))


def predict_videos(
    segmenter: Segmenter,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    report: Callable[[str, str], None] | None = None,
    **kwargs: Any,
) -> tuple[list[VideoSummary], list[tuple[str, str]]]:
    """`predict_video` for each path; a video that fails is reported (`report(name, reason)`) and skipped."""
    done: list[VideoSummary] = []
    failed: list[tuple[str, str]] = []
    used: set[str] = set()
    for path in paths:
        stem, n = Path(path).stem, 1
        while stem in used:  # two inputs with one name: keep both
            n += 1
            stem = f"{Path(path).stem}-{n}"
        used.add(stem)
        try:
            done.append(predict_video(segmenter, path, out, stem=stem, **kwargs))
        except (VideoError, RuntimeError) as e:
            reason = str(e).removeprefix(f"{path}: ")
            failed.append((str(path), reason))
            (report or (lambda name, why: log.warning("%s: %s", name, why)))(str(path), reason)
    return done, failed
