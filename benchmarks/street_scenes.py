"""A generated street-scene set, built unlike `segformer synth`: the second dataset of `benchmarks/short_runs.py`.

CamVid's layout: 11 classes (sky, building, pole, road, sidewalk, tree, sign, fence, car, pedestrian, bicyclist) and
a void label (255, ignored), in landscape images (180x240 by default, half of CamVid's 360x480). Where the built-in
synthetic set has square images, colour drawn from one distribution for every class and objects anywhere, here
colour and position carry most of the information (blue or grey sky on top, grey road in a perspective trapezoid at
the bottom, green trees), the classes are very imbalanced (road and buildings ~25% of the pixels each, bicyclists
and signs a few tenths of a percent), thin structures (poles) are 1-3 pixels wide, objects shrink towards the
vanishing point, and every image has its own lighting (gain, colour cast, gamma) and sensor noise.

    python benchmarks/street_scenes.py --out data/street --train 360 --val 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "sidewalk",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(len(CLASSES))
VOID = 255
# CamVid's colours
PALETTE = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ],
    dtype=np.uint8,
)  # fmt: skip


def _paint(image: np.ndarray, mask: np.ndarray, region: np.ndarray, label: int, colour: np.ndarray) -> None:
    """Label `region` and colour it; `colour` is (3,) or (H, W, 3)."""
    mask[region] = label
    image[region] = colour[region] if colour.ndim == 3 else colour


def _noise(rng: np.random.Generator, shape: tuple[int, int], amount: float) -> np.ndarray:
    return rng.normal(0.0, amount, shape)[..., None]


def street_scene(rng: np.random.Generator, height: int = 180, width: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (H, W, 3) image, uint8 (H, W) mask of class ids and 255 = void) for one random street scene."""
    h, w = height, width
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    image = np.zeros((h, w, 3), np.float32)
    mask = np.full((h, w), SKY, np.uint8)

    horizon = h * rng.uniform(0.34, 0.5)
    vx = w * rng.uniform(0.35, 0.65)  # vanishing point (vx, horizon)
    t = np.clip((yy - horizon) / (h - horizon), 0.0, None)  # 0 at the horizon, 1 at the bottom row
    below = yy > horizon

    # Sky: blue or overcast, lighter towards the horizon.
    top = rng.uniform([60, 110, 170], [150, 190, 250]) if rng.random() < 0.6 else rng.uniform(150, 225, 3)
    sky = top + (yy / h)[..., None] * rng.uniform(20, 60)
    _paint(image, mask, np.ones((h, w), bool), SKY, sky + _noise(rng, (h, w), 3))

    # Road edges and the sidewalk/building edges are lines through the vanishing point.
    bottom_l, bottom_r = w * rng.uniform(-0.35, 0.15), w * rng.uniform(0.85, 1.35)  # road edges at the bottom row
    walk = w * rng.uniform(0.15, 0.5)
    road_l, road_r = vx + (bottom_l - vx) * t, vx + (bottom_r - vx) * t
    base_l, base_r = road_l - walk * t, road_r + walk * t  # where the facades meet the sidewalk

    # Buildings: facades on both sides, piecewise rooflines falling towards the vanishing point, windows.
    facade = np.zeros((h, w), bool)
    colour = np.zeros((h, w, 3), np.float32)
    for side in (-1, 1):
        near = np.where(side < 0, xx < vx, xx >= vx)
        dist = np.abs(xx - vx) / (vx if side < 0 else w - vx)  # 0 at the vanishing point, 1 at the border
        cuts = np.sort(rng.uniform(0.05, 1.0, rng.integers(1, 4)))
        start = 0.0
        for end in [*cuts, 1.01]:
            seg = near & (dist >= start) & (dist < end)
            roof = horizon - dist * h * rng.uniform(0.2, 0.9) - rng.uniform(0, 6)
            base = base_l if side < 0 else base_r
            inside = seg & (yy > roof) & ((~below) | ((xx < base) if side < 0 else (xx > base)))
            wall = rng.uniform(80, 200) * rng.uniform(0.8, 1.0, 3)
            period = rng.uniform(5, 9)
            windows = ((xx % period) < period * 0.5) & ((yy % (period * 1.2)) < period * 0.6)
            colour[inside] = wall
            colour[inside & windows] = wall * rng.uniform(0.3, 0.6)
            facade |= inside
            start = end
    _paint(image, mask, facade, BUILDING, colour + _noise(rng, (h, w), 5))

    # Fence along one side, just above the facade's foot.
    if rng.random() < 0.5:
        left = rng.random() < 0.5
        foot_depth = (xx - vx) / ((bottom_l - walk if left else bottom_r + walk) - vx)  # t of the facade's foot
        foot = horizon + foot_depth * (h - horizon)
        region = facade & (foot_depth > 0) & (yy <= foot) & (yy > foot - (3 + 25 * foot_depth))
        tone = rng.uniform(70, 150) * rng.uniform(0.8, 1.1, 3)
        slats = (xx % 4 < 2)[..., None] * 30.0
        _paint(image, mask, region, FENCE, tone + slats + _noise(rng, (h, w), 4))

    # Sidewalk: between the facades and the road, paving stones.
    sidewalk = below & ~facade & ((xx < road_l) | (xx > road_r))
    stone = rng.uniform(120, 190) * rng.uniform(0.9, 1.05, 3)
    tiles = (((xx // 6) + (yy // 4)) % 2)[..., None] * 12.0
    _paint(image, mask, sidewalk, SIDEWALK, stone + tiles + _noise(rng, (h, w), 6))

    # Road: grey asphalt with a dashed centre line (labelled road, as CamVid's 11-class set does).
    road = below & (xx >= road_l) & (xx <= road_r)
    asphalt = rng.uniform(60, 115) * rng.uniform(0.95, 1.05, 3)
    road_colour = np.broadcast_to(asphalt, (h, w, 3)) + _noise(rng, (h, w), 7)
    centre = vx + (w * rng.uniform(0.3, 0.7) - vx) * t
    dashes = road & (np.abs(xx - centre) < 0.5 + 3 * t) & (np.sin(18 * np.log(t + 0.05)) > 0)
    road_colour[dashes] = rng.uniform(200, 240)
    _paint(image, mask, road, ROAD, road_colour)

    def ground_point(on_road: bool) -> tuple[float, float, float]:
        """(y, x, depth t) of a random ground point on the road or on a sidewalk."""
        depth = rng.uniform(0.08, 1.0) ** 0.7
        y = horizon + depth * (h - horizon)
        row = min(int(y), h - 1)
        if on_road:
            lo, hi = road_l[row, 0], road_r[row, 0]
        elif rng.random() < 0.5:
            lo, hi = base_l[row, 0], road_l[row, 0]
        else:
            lo, hi = road_r[row, 0], base_r[row, 0]
        lo, hi = max(lo, 0.0), min(hi, w - 1.0)
        return y, rng.uniform(lo, hi) if hi > lo else float(np.clip(lo, 0, w - 1)), depth

    # Trees: crowns of overlapping discs on the sides, with trunks.
    for _ in range(rng.integers(0, 4)):
        gy, gx, depth = ground_point(on_road=False)
        size = 6 + 30 * depth
        trunk = (np.abs(xx - gx) < 0.5 + 1.5 * depth) & (yy <= gy) & (yy > gy - 2.2 * size)
        crown = np.zeros((h, w), bool)
        for _ in range(rng.integers(3, 7)):
            cy, cx = gy - 2.2 * size + rng.normal(0, size * 0.4), gx + rng.normal(0, size * 0.6)
            r = size * rng.uniform(0.5, 0.9)
            crown |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        leaves = rng.uniform([30, 80, 20], [90, 150, 80]) + _noise(rng, (h, w), 18)
        _paint(image, mask, trunk, TREE, np.array([80.0, 60, 40]) * rng.uniform(0.7, 1.2))
        _paint(image, mask, crown, TREE, leaves)

    # Poles, some carrying a sign.
    for _ in range(rng.integers(1, 5)):
        gy, gx, depth = ground_point(on_road=False)
        length = 20 + 70 * depth
        pole = (np.abs(xx - gx) < 0.5 + 1.2 * depth) & (yy <= gy) & (yy > gy - length)
        _paint(image, mask, pole, POLE, np.full(3, rng.uniform(50, 150)))
        if rng.random() < 0.5:
            r = 2 + 5 * depth
            cy = gy - length + r
            shape = (
                (yy - cy) ** 2 + (xx - gx) ** 2 < r * r
                if rng.random() < 0.5
                else (np.abs(yy - cy) < r) & (np.abs(xx - gx) < r)
            )
            sign = np.array([[200, 30, 30], [30, 70, 200], [230, 200, 30]][rng.integers(3)], np.float32)
            _paint(image, mask, shape, SIGN, sign + _noise(rng, (h, w), 8))

    # Road users, far to near (nearer ones cover farther ones).
    users = [(CAR, True)] * int(rng.integers(0, 5)) + [(PEDESTRIAN, False)] * int(rng.integers(0, 4))
    if rng.random() < 0.35:
        users.append((BICYCLIST, True))
    placed = sorted(((ground_point(on_road), kind) for kind, on_road in users), key=lambda p: p[0][0])
    for (gy, gx, depth), kind in placed:
        if kind == CAR:
            cw = (0.06 + 0.24 * depth) * w
            chh = cw * rng.uniform(0.55, 0.75)
            body = (np.abs(xx - gx) < cw / 2) & (yy <= gy) & (yy > gy - chh)
            hue = rng.uniform(20, 230, 3) if rng.random() < 0.6 else np.full(3, rng.choice([25.0, 120.0, 220.0]))
            car = np.broadcast_to(hue, (h, w, 3)) + _noise(rng, (h, w), 4)
            glass = body & (yy < gy - chh * 0.55) & (np.abs(xx - gx) < cw * 0.4)
            car[glass] = rng.uniform(20, 60)
            for wx in (gx - cw * 0.3, gx + cw * 0.3):
                car[body & ((yy - gy) ** 2 + (xx - wx) ** 2 < (chh * 0.22) ** 2)] = 15
            _paint(image, mask, body, CAR, car)
        else:
            ph = (0.1 + 0.3 * depth) * h * (0.8 if kind == BICYCLIST else 1.0)
            person = ((xx - gx) / (ph * 0.13)) ** 2 + ((yy - (gy - ph * 0.45)) / (ph * 0.42)) ** 2 < 1
            person |= (yy - (gy - ph * 0.93)) ** 2 + (xx - gx) ** 2 < (ph * 0.08) ** 2
            clothes = rng.uniform(10, 200, 3)
            figure = np.broadcast_to(clothes, (h, w, 3)) + _noise(rng, (h, w), 6)
            if kind == BICYCLIST:
                r = ph * 0.22
                wheels = np.zeros((h, w), bool)
                for wx in (gx - r * 1.3, gx + r * 1.3):
                    d = np.sqrt((yy - (gy - r)) ** 2 + (xx - wx) ** 2)
                    wheels |= np.abs(d - r * 0.8) < 0.7 + 0.6 * depth
                figure[wheels] = 20
                person |= wheels
            _paint(image, mask, person, kind, figure)

    # Void: unlabelled clutter (bins, boxes, odd things), as CamVid's void.
    for _ in range(rng.integers(0, 4)):
        gy, gx, depth = ground_point(on_road=rng.random() < 0.3)
        s = 3 + 14 * depth
        blob = ((yy - (gy - s)) / s) ** 2 + ((xx - gx) / (s * rng.uniform(0.5, 1.5))) ** 2 < 1
        _paint(image, mask, blob, VOID, rng.uniform(0, 255, 3) + _noise(rng, (h, w), 10))

    # The camera: exposure, colour cast, gamma, sensor noise.
    image = image * rng.uniform(0.55, 1.35) * rng.uniform(0.85, 1.15, 3)
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    image += rng.normal(0, rng.uniform(2, 8), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_street(root: Path, n_train: int, n_val: int, height: int = 180, width: int = 240, seed: int = 0) -> Path:
    """The folder layout `--dataset folder` reads (ROOT/images/SPLIT/*.png, ROOT/masks/SPLIT/*.png, classes.txt);
    kept when it already holds the same number of images."""
    marker = root / "street.txt"
    spec = f"{n_train} {n_val} {height} {width} {seed}\n"
    if marker.is_file() and marker.read_text() == spec:
        return root
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            image, mask = street_scene(rng, height, width)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            label = Image.fromarray(mask).convert("P")
            flat = np.zeros((256, 3), np.uint8)
            flat[: len(PALETTE)] = PALETTE
            label.putpalette(flat.flatten().tolist())
            label.save(root / "masks" / split / f"{i:04d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    marker.write_text(spec)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/street"))
    parser.add_argument("--train", type=int, default=360)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--size", default="180x240", help="HxW")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    root = write_street(args.out, args.train, args.val, height, width)
    counts = np.zeros(256, np.int64)
    for path in sorted((root / "masks" / "train").glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)
    share = counts / counts.sum()
    shares = [f"{name} {100 * share[c]:.2f}%" for c, name in enumerate(CLASSES)]
    print(", ".join([*shares, f"void {100 * share[VOID]:.2f}%"]))


if __name__ == "__main__":
    main()
