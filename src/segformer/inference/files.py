"""Predicting a set of image files into a folder (what `segformer predict` does), with the model kept busy.

Three stages overlap, each in its own processes:

1. readers (a torch DataLoader over the file list) decode each file and, for one pass without probabilities,
   `prepare` it (normalise, resize to the model input size), as `Segmenter` does;
2. this process batches prepared images of the same *model input* size (photos of different original sizes often
   share it after the keep-ratio resize) and `run`s them through the segmenter's forward;
3. writers `finish` each (the label map at the original size; on a GPU that is done beside the model) and write
   NAME.png, NAME_overlay.jpg and NAME_prob.npy, each atomically (`fileio.atomic_write`).

TTA and probabilities keep the reading and writing in workers and run all three stages here
(`Segmenter.predict_arrays`) on same-size groups. Label maps equal `Segmenter(model)(image)` for every file.

Under torch.distributed (torchrun) every rank builds the same plan of outputs and takes files rank, rank + world,
...; problems found while planning (missing inputs, outputs that would overwrite an input) are reported by rank 0.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..fileio import atomic_write, write_npy
from ..imageio import IMAGE_SUFFIXES, ImageReadError, display_rgb, write_label_png
from ..runtime import cores_per_process, rank_world
from .finish import finish
from .prepare import Prepared, prepare, stack_images, to_model_array
from .run import Pass
from .segmenter import Segmenter

log = logging.getLogger("segformer")


@dataclass
class PredictSummary:
    """What `predict_files` did: outputs written per input, and (input, reason) for each file that failed."""

    written: list[Path]
    failed: list[tuple[str, str]]


@dataclass(frozen=True)
class OutputStyle:
    """How outputs look: class colours and names for the overlay, its opacity and legend; and `encode`, class ids
    (H, W) -> the values NAME.png holds instead of the ids (e.g. a `LabelConvention.encode`: the training masks' own
    values), applied by the writer so that no NAME.png is ever left in the other convention."""

    palette: np.ndarray
    class_names: Sequence[str] | None = None
    alpha: float = 0.5
    legend: bool = True
    encode: Callable[[np.ndarray], np.ndarray] | None = None


def default_num_workers() -> int:
    """Reader (and as many writer) processes per model process: the cores this process shares with the other
    torchrun processes of its machine, 1 to 8. On the CPU the writers compute the full-size label maps, about as
    long as the model takes (`benchmarks/predict_folder.py --breakdown`): 104 photos took 22 s with 2 readers and 2
    writers and 25-26 s with 1 of each on 2 cores. Readers mostly wait."""
    return max(1, min(8, cores_per_process()))


def collect_images(
    inputs: Sequence[str | Path], exclude: str | Path | None = None, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """(image path, output stem relative to the output folder) for files and folders (searched recursively,
    `suffixes` only, sorted), skipping anything under `exclude`; plus (input, reason) for missing inputs."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path]] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            for f in files:
                if skip is not None and skip != path.resolve() and f.resolve().is_relative_to(skip):
                    continue  # earlier outputs in an --out inside this folder are not inputs
                found.append((f, f.relative_to(path).with_suffix("")))
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            missing.append((str(path), "no such file or folder"))
    return found, missing


def plan_outputs(
    files: Sequence[tuple[Path, Path]],
    out: Path,
    fail: Callable[[str, str], None],
    endings: Sequence[str] = (".png", "_overlay.jpg"),
) -> list[tuple[Path, Path]]:
    """(input, output stem under `out`) per file: two inputs with one name get NAME, NAME-2, ...; a file whose
    outputs (stem + each of `endings`, the first the main one) would overwrite an input is reported through `fail`
    and left out."""
    inputs_resolved = {f.resolve() for f, _ in files}
    used: set[Path] = set()
    plan: list[tuple[Path, Path]] = []
    for path, rel in files:
        stem, n = rel, 1
        while _named(out / stem, endings[0]) in used:  # two inputs with one name: keep both
            n += 1
            stem = rel.with_name(f"{rel.name}-{n}")
        target = _named(out / stem, endings[0])
        if any(_named(out / stem, end).resolve() in inputs_resolved for end in endings):
            fail(str(path), f"output {target} would overwrite an input image; choose another --out")
            continue
        used.add(target)
        plan.append((path, out / stem))
    return plan


def _named(stem: Path, ending: str) -> Path:
    """stem + ending, without `with_suffix`, which would cut names such as 'img.v2' at the dot."""
    return stem.parent / f"{stem.name}{ending}"


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: reading (DataLoader workers)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """One file as a reader hands it over: the image the model reads (H, W, C), and, when the readers prepare, the
    prepared model input (1, C, h, w); or why it could not be read."""

    index: int
    image: Tensor | None = None
    prepared: Prepared | None = None
    error: str | None = None


class _Reader(torch.utils.data.Dataset):
    """Item i of the plan, read (and, with `prepare`, prepared) in a worker process."""

    def __init__(self, paths: Sequence[Path], segmenter: Segmenter, prepare: bool) -> None:
        self.paths = list(paths)
        self.channels, self.mean, self.std = segmenter.channels, segmenter.mean, segmenter.std
        self.options = segmenter.options if prepare else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> _Loaded:
        path = self.paths[i]
        try:
            array = to_model_array(path, self.channels)
        except (ImageReadError, OSError) as e:
            return _Loaded(i, error=str(e).removeprefix(f"{path}: "))
        image = torch.from_numpy(np.require(array, requirements=["C", "W"]))  # crosses processes in shared memory
        if self.options is None:
            return _Loaded(i, image)
        return _Loaded(i, image, prepare(stack_images([array]), self.options, self.mean, self.std))


def _loader(reader: _Reader, num_workers: int) -> Iterable[_Loaded]:
    if num_workers == 0:
        return (reader[i] for i in range(len(reader)))
    return torch.utils.data.DataLoader(
        reader, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity
    )


def _identity(item: Any) -> Any:
    return item


def _batches(items: Iterable[_Loaded], size_of: Callable[[_Loaded], Any], limit: int) -> Iterator[list[_Loaded]]:
    """Items grouped by `size_of` into batches of at most `limit`, in any order; a group is let go when full, or,
    once a few batches' worth are held (many different sizes), the oldest group; unreadable files alone."""
    pending: dict[Any, list[_Loaded]] = {}
    held = 0
    for item in items:
        if item.error is not None:
            yield [item]
            continue
        key = size_of(item)
        pending.setdefault(key, []).append(item)
        held += 1
        if len(pending[key]) >= limit or held >= 4 * limit:
            key = key if len(pending[key]) >= limit else next(iter(pending))
            held -= len(pending[key])
            yield pending.pop(key)
    yield from pending.values()


# ---------------------------------------------------------------------------------------------------------------
# Stage 3: writing (a process pool)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Job:
    """What a writer needs for one file: the label map, or the model's logits (K, h', w') for an input of
    `input_size` and where `finish` puts them (`target`); the image for the overlay; the probabilities when asked
    for."""

    index: int
    stem: Path
    image: np.ndarray
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None
    input_size: tuple[int, int] | None = None
    target: Prepared | None = None
    probs: np.ndarray | None = None

    def finish(self) -> np.ndarray:
        """The label map: given, or finished from the logits (stage 3, in the writer)."""
        if self.labels is not None:
            return self.labels
        assert self.logits is not None and self.input_size is not None and self.target is not None
        only = Pass(torch.from_numpy(self.logits)[None], self.input_size)  # (1, K, h', w')
        with torch.inference_mode():
            return _compact(finish([only], self.target).labels[0])


def _compact(labels: Tensor | np.ndarray) -> np.ndarray:
    """Class ids in the smallest type holding them (8x less to send to a writer than int64)."""
    labels = labels.numpy() if isinstance(labels, Tensor) else labels
    return labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.int32)


def _write(job: _Job, style: OutputStyle) -> str | None:
    """Write one file's outputs; None, or why they could not be written."""
    from ..visualize import overlay

    labels = job.finish()
    picture = overlay(display_rgb(job.image), labels, style.palette, style.class_names, style.alpha, style.legend)
    stem = job.stem
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        if style.encode is None:
            atomic_write(_named(stem, ".png"), lambda tmp: write_label_png(tmp, labels, style.palette))
        else:
            raw = Image.fromarray(style.encode(labels))
            atomic_write(_named(stem, ".png"), lambda tmp: raw.save(tmp, format="PNG"))
        atomic_write(
            _named(stem, "_overlay.jpg"), lambda tmp: Image.fromarray(picture).save(tmp, format="JPEG", quality=90)
        )
        if job.probs is not None:
            write_npy(_named(stem, "_prob.npy"), job.probs)
    except OSError as e:
        return f"could not write outputs under {stem.parent} ({e})"
    return None


_STYLE: OutputStyle | None = None  # set in each writer process by `_start_writer`


def _start_writer(style: OutputStyle) -> None:
    """A writer process. Ctrl-C is for the main process, which then lets the jobs under way finish (each output is
    written whole or not at all, with no temporary file left behind) and drops the queued ones."""
    global _STYLE
    _STYLE = style
    torch.set_num_threads(1)  # the model process keeps the cores; each writer is one of the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_in_worker(job: _Job) -> str | None:
    assert _STYLE is not None
    return _write(job, _STYLE)


class _Writers:
    """Runs `_write` in `n` processes (0: here, at once), with at most 2n jobs in flight so that a slow disk holds
    back the model instead of filling the memory; `done(index, error)` is called here for each finished job."""

    def __init__(self, n: int, style: OutputStyle, done: Callable[[int, str | None], None]) -> None:
        self.n, self.style, self.done = n, style, done
        self.pool = ProcessPoolExecutor(n, initializer=_start_writer, initargs=(style,)) if n else None
        self.pending: deque[tuple[int, Future]] = deque()

    def submit(self, job: _Job) -> None:
        if self.pool is None:
            self.done(job.index, _write(job, self.style))
            return
        self.pending.append((job.index, self.pool.submit(_write_in_worker, job)))
        while len(self.pending) > 2 * self.n or (self.pending and self.pending[0][1].done()):
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        index, future = self.pending.popleft()
        self.done(index, future.result())

    def close(self) -> None:
        """Wait for every job, then stop the processes."""
        while self.pending:
            self._finish_oldest()
        if self.pool is not None:
            self.pool.shutdown()

    def abort(self) -> None:
        """Drop the queued jobs, let those under way finish, stop the processes."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the model, and the whole run
# ---------------------------------------------------------------------------------------------------------------
def _prepared_by_readers(segmenter: Segmenter, probabilities: bool) -> bool:
    """Whether readers prepare and writers finish: whole-image inference, one pass, label maps only."""
    return segmenter.options.mode == "whole" and segmenter.options.passes == 1 and not probabilities


def _predict_prepared(segmenter: Segmenter, group: list[_Loaded], plan: list[tuple[Path, Path]]) -> list[_Job]:
    """Jobs for a batch of readers' prepared inputs of one size: `run` here; on the CPU the writers `finish`, on a
    GPU that is done here."""
    prepared = Prepared.concat([item.prepared for item in group])  # type: ignore[misc]  # (B, C, h, w)
    prepared = Prepared(prepared.x.to(segmenter.device), prepared.image_size, prepared.options)  # type: ignore[union-attr]
    with torch.inference_mode():
        (only,) = segmenter.run(prepared)  # logits (B, K, h/4, w/4)
    jobs = []
    for k, item in enumerate(group):
        assert item.image is not None and item.prepared is not None
        target = item.prepared.without_input()
        job = _Job(item.index, plan[item.index][1], item.image.numpy(), target=target)
        if segmenter.device.type == "cpu":
            job.logits, job.input_size = only.logits[k].numpy(), only.size
        else:
            with torch.inference_mode():
                job.labels = _compact(finish([Pass(only.logits[k : k + 1], only.size)], target).labels[0].cpu())
        jobs.append(job)
    return jobs


def _predict_arrays(
    segmenter: Segmenter, group: list[_Loaded], plan: list[tuple[Path, Path]], probabilities: bool
) -> list[_Job]:
    """Jobs for a batch of same-size images through `Segmenter.predict_arrays` (slide, TTA, probabilities)."""
    images = [item.image.numpy() for item in group]  # type: ignore[union-attr]
    results = segmenter.predict_arrays(images, softmax=probabilities)
    jobs = []
    for item, image, result in zip(group, images, results, strict=True):
        labels, probs = result if probabilities else (result, None)
        job = _Job(item.index, plan[item.index][1], image, labels=_compact(labels))
        if probs is not None:
            job.probs = probs.to(torch.float16).numpy()
        jobs.append(job)
    return jobs


def predict_files(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    palette: np.ndarray,
    class_names: Sequence[str] | None = None,
    probabilities: bool = False,
    alpha: float = 0.5,
    legend: bool = True,
    progress: bool = True,
    report: Callable[[str, str], None] | None = None,
    num_workers: int | None = None,
    shard: tuple[int, int] | None = None,
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
    skip: Callable[[Path], bool] | None = None,
) -> PredictSummary:
    """For every image in `inputs` (files, or folders searched recursively) write, under `out` keeping the
    relative path: NAME.png (palette PNG whose pixel values are the class ids, original size), NAME_overlay.jpg
    (image blended with class colours, legend of the classes present) and, with `probabilities`, NAME_prob.npy
    (float16 (K, H, W) softmax). A file that cannot be read or predicted is reported through `report(name,
    reason)` (default: a logged warning) and skipped; the others are still written.

    `num_workers` reader and as many writer processes (default `default_num_workers()`, or none for a single file,
    which they would only slow down; 0: all in this process).
    `shard` = (rank, world): this process does files rank, rank + world, ... (default: torch.distributed's).
    `encode`: NAME.png holds `encode(class ids)` instead (as `OutputStyle.encode`); the overlay still shows classes.
    `skip`: files found that are another runner's (GeoTIFFs for `inference.raster`), left out without a word.
    """
    out = Path(out)
    rank, world = shard or rank_world()
    workers = default_num_workers() if num_workers is None else num_workers
    # Folders of an RGB model: .npy files there are more likely earlier NAME_prob.npy outputs than images.
    suffixes = IMAGE_SUFFIXES if segmenter.channels != 3 else tuple(x for x in IMAGE_SUFFIXES if x != ".npy")
    files, missing = collect_images(inputs, exclude=out, suffixes=suffixes)
    if not files and not missing:
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    files = [f for f in files if skip is None or not skip(f[0])]
    failed: list[tuple[str, str]] = []

    def fail(name: str, reason: str) -> None:
        failed.append((name, reason))
        (report or (lambda n, r: log.warning("%s: %s", n, r)))(name, reason)

    planning: list[tuple[str, str]] = list(missing)
    plan = plan_outputs(files, out, lambda name, reason: planning.append((name, reason)))
    for name, reason in planning if rank == 0 else ():  # every rank found them: one reports
        fail(name, reason)
    plan = plan[rank::world]
    if not plan:
        return PredictSummary([], failed)
    if len(plan) < 2 and num_workers is None:  # nothing to overlap: starting processes would only add latency
        workers = 0
    style = OutputStyle(palette, class_names, alpha, legend, encode)
    written = _run(segmenter, plan, style, probabilities, workers, fail, progress and rank == 0)
    return PredictSummary(written, failed)


def _run(
    segmenter: Segmenter,
    plan: list[tuple[Path, Path]],
    style: OutputStyle,
    probabilities: bool,
    workers: int,
    fail: Callable[[str, str], None],
    progress: bool,
) -> list[Path]:
    """Read, predict and write every file of `plan`; the NAME.png written, in plan order."""
    from tqdm import tqdm

    fast = _prepared_by_readers(segmenter, probabilities)
    ok: dict[int, Path] = {}
    bar = tqdm(total=len(plan), desc="predict", unit="img", disable=not progress)

    def done(index: int, error: str | None) -> None:
        if error is None:
            ok[index] = _named(plan[index][1], ".png")
        else:
            fail(str(plan[index][0]), error)
        bar.update(1)

    reader = _Reader([path for path, _ in plan], segmenter, prepare=fast)
    size_of = (lambda item: tuple(item.prepared.x.shape)) if fast else (lambda item: tuple(item.image.shape))
    writers = _Writers(workers, style, done)
    try:
        for group in _batches(_loader(reader, workers), size_of, segmenter.options.batch_size):
            if group[0].error is not None:
                done(group[0].index, group[0].error)
                continue
            for job in _predict_group(segmenter, group, plan, fast, probabilities, done):
                writers.submit(job)
        writers.close()
    except BaseException:
        writers.abort()
        raise
    finally:
        bar.close()
    return [ok[i] for i in sorted(ok)]


def _predict_group(
    segmenter: Segmenter,
    group: list[_Loaded],
    plan: list[tuple[Path, Path]],
    fast: bool,
    probabilities: bool,
    done: Callable[[int, str | None], None],
) -> list[_Job]:
    """The writer jobs of one batch; a batch the model fails on is reported file by file, with the first line."""
    try:
        if fast:
            return _predict_prepared(segmenter, group, plan)
        return _predict_arrays(segmenter, group, plan, probabilities)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        for item in group:
            done(item.index, f"prediction failed ({first})")
        return []
