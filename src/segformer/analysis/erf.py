"""Effective receptive fields (the paper's Fig. 3): how strongly each input pixel moves one output position.

As the authors describe it (NVlabs/SegFormer#64): the gradient of the centre output with respect to the input,
averaged over images. Per image, the output position's channels pass through a ReLU and are summed (the convention of
RepLKNet's ERF tool: a plain channel sum of a LayerNorm output is constant when the norm's scales are equal, so its
gradient vanishes), the gradient's magnitude is summed over the input channels, and the (H, W) maps are averaged
over the images. Targets: the four encoder stage outputs and the decoder's fused features; points: the centre and,
optionally, the top-left corner of the target's map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_write, write_json
from ..inference.prepare import ImageLike, normalize_batch, resize, stack_images, to_model_array
from ..model.config import channel_stats
from ..visualize import heat_colours, save_grid

TARGETS = {
    "stage1": "encoder stage 1 output (stride 4)",
    "stage2": "encoder stage 2 output (stride 8)",
    "stage3": "encoder stage 3 output (stride 16)",
    "stage4": "encoder stage 4 output (stride 32)",
    "head": "decoder's fused features (fuse conv, BN, ReLU; stride 4)",
}
# Output position on a target's (h, w) map.
POINTS: dict[str, Callable[[int, int], tuple[int, int]]] = {
    "centre": lambda h, w: (h // 2, w // 2),
    "corner": lambda h, w: (0, 0),
}


def input_gradient(output: Tensor, x: Tensor, point: str = "centre", retain_graph: bool = False) -> Tensor:
    """(B, H, W): |d relu(output[b, :, i, j]).sum() / d x[b]| summed over input channels, (i, j) = POINTS[point] of
    `output` (B, C, h, w), a function of `x` (B, C_in, H, W) that needs a gradient. Images do not mix (the model is
    in eval mode), so one backward gives every image its own map."""
    i, j = POINTS[point](output.shape[-2], output.shape[-1])
    (grad,) = torch.autograd.grad(output[:, :, i, j].relu().sum(), x, retain_graph=retain_graph)
    return grad.abs().sum(dim=1)


def _targets(model: nn.Module, x: Tensor, targets: Sequence[str]) -> dict[str, Tensor]:
    features = model.encoder(x)  # gradients on: the plain path
    out = {f"stage{i + 1}": f for i, f in enumerate(features)}
    if "head" in targets:
        out["head"] = model.head.fused_features(features)
    return {t: out[t] for t in targets}


def _batches(images: Iterable[ImageLike], channels: int, size: tuple[int, int], batch: int) -> Iterable[Tensor]:
    """(B, H, W, C) float batches of raw pixel values, every image resized to `size`."""
    group: list[Tensor] = []
    for image in images:
        group.append(_resized(to_model_array(image, channels), size))
        if len(group) == batch:
            yield torch.stack(group)
            group = []
    if group:
        yield torch.stack(group)


def _resized(array: np.ndarray, size: tuple[int, int]) -> Tensor:
    """(H, W, C) float: bilinear, as inference resizes (it commutes with the per-channel normalisation after it)."""
    x = stack_images([array]).permute(0, 3, 1, 2).float()  # (1, C, h, w)
    return resize(x, size)[0].permute(1, 2, 0)


def effective_receptive_fields(
    model: nn.Module,
    images: Iterable[ImageLike],
    size: tuple[int, int] = (256, 256),
    targets: Sequence[str] = tuple(TARGETS),
    points: Sequence[str] = ("centre",),
    batch_size: int = 4,
) -> dict[str, dict[str, np.ndarray]]:
    """{target: {point: (H, W) float64 map}}: the mean over `images` (paths, PIL images or arrays, each resized to
    `size` (H, W) and normalised as the model's inference does) of `input_gradient` for each target and point."""
    for name, table in (("target", TARGETS), ("point", POINTS)):
        unknown = [t for t in (targets if name == "target" else points) if t not in table]
        if unknown:
            raise ValueError(f"unknown ERF {name} {unknown[0]!r}; choose from {', '.join(table)}")
    config = model.config
    mean, std = channel_stats(config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = {t: {p: torch.zeros(size, dtype=torch.float64) for p in points} for t in targets}
    count = 0
    try:
        with torch.enable_grad():
            for raw in _batches(images, config.in_channels, size, batch_size):
                x = normalize_batch(raw.to(device), mean, std).requires_grad_(True)  # (B, C, H, W)
                outputs = _targets(model, x, targets)
                jobs = [(t, p) for t in targets for p in points]
                for k, (t, p) in enumerate(jobs):
                    grad = input_gradient(outputs[t], x, p, retain_graph=k < len(jobs) - 1)
                    sums[t][p] += grad.sum(dim=0).double().cpu()
                count += x.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no images to compute effective receptive fields on")
    return {t: {p: (sums[t][p] / count).numpy() for p in points} for t in targets}


def mass_radius(erf: np.ndarray, centre: tuple[int, int], fraction: float = 0.5) -> int:
    """The half-width r of the smallest square [i-r, i+r] x [j-r, j+r] around `centre` that holds `fraction` of the
    map's total: one number for how far a position effectively sees."""
    total = float(erf.sum())
    if total <= 0:
        return 0
    i, j = centre
    for r in range(max(erf.shape)):
        if erf[max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].sum() >= fraction * total:
            return r
    return max(erf.shape)


def erf_image(erf: np.ndarray, decades: float = 3.0) -> np.ndarray:
    """(H, W, 3) uint8 heat map of a map on a log scale: its maximum white, `decades` orders of magnitude below it
    black (a linear scale shows only the peak next to the output position)."""
    peak = float(erf.max())
    if peak <= 0:
        return heat_colours(np.zeros_like(erf))
    logs = np.log10(np.maximum(erf / peak, 10.0**-decades))
    return heat_colours(1.0 + logs / decades)


def save_erf(maps: dict[str, dict[str, np.ndarray]], out: str | Path, images: int | None = None) -> dict[str, Any]:
    """Write OUT/erf_TARGET_POINT.png (one heat map each), OUT/erf.png (side by side: a row per point, a column per
    target, titled with the radii in input pixels), OUT/erf.npz (the arrays) and OUT/erf.json (the half-widths of the
    squares around the point holding 50% and 90% of each map); returns the JSON's content."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = list(maps)
    points = list(maps[targets[0]])
    stats: dict[str, Any] = {"images": images, "scale": "log10, 3 decades below the maximum", "radius": {}}
    rows, titles = [], []
    for p in points:
        row, row_titles = [], []
        for t in targets:
            erf = maps[t][p]
            centre = POINTS[p](*erf.shape)  # on the input; the output position sits at the same relative place
            r50, r90 = mass_radius(erf, centre, 0.5), mass_radius(erf, centre, 0.9)
            stats["radius"][f"{t}/{p}"] = {"50%": r50, "90%": r90}
            picture = erf_image(erf)
            path = out / f"erf_{t}_{p}.png"
            atomic_write(path, lambda tmp, picture=picture: Image.fromarray(picture).save(tmp, format="PNG"))
            zoom = max(1, -(-256 // max(erf.shape)))  # small maps drawn larger in the figure (nearest)
            row.append(picture.repeat(zoom, axis=0).repeat(zoom, axis=1))
            row_titles.append(f"{t} {p}: r50 {r50}, r90 {r90}")
        rows.append(row)
        titles.append(row_titles)
    save_grid(rows, out / "erf.png", titles=titles)
    arrays = {f"{t}_{p}": maps[t][p] for t in targets for p in points}

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: given a name, numpy would append ".npz" to it
            np.savez_compressed(f, **arrays)

    atomic_write(out / "erf.npz", write_npz)
    write_json(out / "erf.json", stats)
    return stats
