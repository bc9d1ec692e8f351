"""What each standard dataset is: class names, colours, label mappings and the paper's train/eval geometry.

Pure data plus tiny helpers, so the evaluation, demo and training code can import names and palettes without
touching the disk. Class orders follow the ids that the released checkpoints predict (mmseg's order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..constants import IGNORE_INDEX
from ..protocol import InferenceOptions

Palette = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's classes and the geometry of the paper recipe for it.

    `scale` is mmseg's img_scale (long side, short side) of training: an image is rescaled, keeping its aspect
    ratio, to the largest size with long side <= scale[0] and short side <= scale[1]; `crop` is (H, W). `test` is
    the paper's test protocol (whole at the test scale, or slide windows), `tta_scales` its TTA ratios.
    """

    name: str
    class_names: tuple[str, ...]
    palette: Palette
    scale: tuple[int, int] = (2048, 512)
    crop: tuple[int, int] = (512, 512)
    test: InferenceOptions = InferenceOptions(scale=(2048, 512))
    tta_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    ignore_index: int = field(default=IGNORE_INDEX)

    def __post_init__(self) -> None:
        if len(self.palette) != len(self.class_names):
            raise ValueError(f"dataset {self.name!r}: {len(self.palette)} colours for {len(self.class_names)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def test_protocol(self) -> InferenceOptions:
        """The paper's test settings for this dataset (ADE20K: whole at (2048, 512), 32-aligned; Cityscapes: slide)."""
        return self.test

    def palette_array(self) -> np.ndarray:
        """The palette as a (K, 3) uint8 array, the form `imageio.write_label_png` and `visualize` take."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    def to_dict(self) -> dict:
        """JSON/YAML-ready (lists instead of tuples)."""
        d = {**asdict(self), "test": self.test.to_dict()}
        return {
            k: [list(x) for x in v] if k == "palette" else list(v) if isinstance(v, tuple) else v for k, v in d.items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> DatasetInfo:
        """Inverse of `to_dict` (lists back to tuples)."""
        values = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                  for k, v in data.items() if k != "test"}  # fmt: skip
        return cls(**values, test=InferenceOptions.from_dict(data.get("test")) or InferenceOptions())


def _colours(hex_table: str) -> Palette:
    """'rrggbb rrggbb ...' -> ((r, g, b), ...): palettes are stored as hex to keep them compact and greppable."""
    return tuple((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)) for h in hex_table.split())


def voc_palette(num_classes: int = 256) -> Palette:
    """Pascal VOC's colour map: the bits of the class id spread over the high bits of R, G and B."""
    colours = []
    for k in range(num_classes):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def lookup_table(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry uint8 LUT: `lut[mask]` relabels a uint8 mask in one vectorised step."""
    lut = np.full(256, default, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


# ---------------------------------------------------------------------------------------------------------------
# ADE20K (SceneParsing, 150 classes). Files hold 0 = "other" and 1..150; reduce_zero_label maps 0 -> 255, k -> k-1.
# ---------------------------------------------------------------------------------------------------------------
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_REDUCE_ZERO_LABEL = lookup_table({k: k - 1 for k in range(1, 255)} | {0: IGNORE_INDEX, 255: IGNORE_INDEX})

_ADE20K_COLOURS = (
    "787878 b47878 06e6e6 503232 04c803 787850 8c8c8c cc05ff e6e6e6 04fa07 e005ff ebff07 96053d 787846 08ff33 "
    "ff0652 8fff8c ccff04 ff3307 cc4603 0066c8 3de6fa ff0633 0b66ff ff0747 ff09e0 0907e6 dcdcdc ff095c 7009ff "
    "08ffd6 07ffe0 ffb806 0aff47 ff290a 07ffff e0ff08 6608ff ff3d06 ffc207 ff7a08 00ff14 ff0829 ff0599 0633ff "
    "eb0cff a09614 00a3ff 8c8c8c fa0a0f 14ff00 1fff00 ff1f00 ffe000 99ff00 0000ff ff4700 00ebff 00adff 1f00ff "
    "0bc8c8 ff5200 00fff5 003dff 00ff70 00ff85 ff0000 ffa300 ff6600 c2ff00 008fff 33ff00 0052ff 00ff29 00ffad "
    "0a00ff adff00 00ff99 ff5c00 ff00ff ff00f5 ff0066 ffad00 ff0014 ffb8b8 001fff 00ff3d 0047ff ff00cc 00ffc2 "
    "00ff52 000aff 0070ff 3300ff 00c2ff 007aff 00ffa3 ff9900 00ff0a ff7000 8fff00 5200ff a3ff00 ffeb00 08b8aa "
    "8500ff 00ff5c b800ff ff001f 00b8ff 00d6ff ff0070 5cff00 00e0ff 70e0ff 46b8a0 a300ff 9900ff 47ff00 ff00a3 "
    "ffcc00 ff008f 00ffeb 85ff00 ff00eb f500ff ff007a fff500 0abed4 d6ff00 00ccff 1400ff ffff00 0099ff 0029ff "
    "00ffcc 2900ff 29ff00 ad00ff 00f5ff 4700ff 7a00ff 00ffb8 005cff b8ff00 0085ff ffd600 19c2c2 66ff00 5c00ff "
)

_COCO_STUFF_COLOURS = (
    "00c040 00c040 004060 80c0c0 004040 00c0e0 00c0c0 80c040 00c060 80c040 8020c0 0000e0 000040 00a0c0 800060 "
    "8000c0 0020c0 8080e0 0000c0 80a0c0 808000 800020 802000 800080 408020 00a000 000000 c080a0 002000 008080 "
    "4080a0 80a000 008000 c08020 806080 000080 400020 00e080 800000 c000a0 006080 808080 4000a0 80e080 808040 "
    "c00020 806000 8000c0 008020 40e000 000040 8080a0 406000 0080c0 0080a0 c0e000 008040 808020 c02080 0040c0 "
    "000020 40a080 804040 8000a0 402080 80c0c0 0000a0 c0a080 80c000 800060 c02000 804080 408060 40a000 004000 "
    "c080e0 402000 00c080 4080e0 c0a000 00c000 c08060 c06080 004080 400060 40e080 804000 c000e0 406080 80c080 "
    "4000e0 c0e080 80c040 c00060 c06000 8040c0 008060 00e000 404040 8080e0 006000 40c0c0 0080e0 80e000 40c040 "
    "808060 802080 4000c0 004060 00a080 c00040 8040e0 002080 c080c0 0040e0 80a080 c08000 804020 802040 c00080 "
    "40c020 00a040 400000 c0c0a0 002040 408080 40c0a0 80a040 408000 c0c020 8060c0 400080 404020 00e0c0 c00000 "
    "c040a0 0060c0 c08080 4040a0 80e0c0 c08040 c04020 806040 c000c0 00c020 40e040 400040 80c0a0 406040 4080c0 "
    "00c0a0 c0e040 408040 80c020 c020c0 4040c0 004020 40a0c0 c04040 8040a0 4020c0 c0c0c0 0040a0 c0a0c0 c0c000 "
    "804060 c02040 c04080 40c060 40a040 404000 "
)

# ---------------------------------------------------------------------------------------------------------------
# Cityscapes: 19 evaluated classes (trainIds) and the official labelId -> trainId table (everything else ignored).
# ---------------------------------------------------------------------------------------------------------------
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

_CITYSCAPES_COLOURS = (
    "804080 f423e8 464646 66669c be9999 999999 faaa1e dcdc00 6b8e23 98fb98 4682b4 dc143c ff0000 00008e 000046 "
    "003c64 005064 0000e6 770b20"
)

# labelId -> trainId for the 19 evaluated classes; ids 0-6, 9, 10, 14-16, 18, 29, 30 and -1 are ignored (255).
CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_LABEL_TO_TRAIN_LUT = lookup_table(CITYSCAPES_LABEL_TO_TRAIN)

# ---------------------------------------------------------------------------------------------------------------
# Pascal VOC 2012: background + 20 objects; SegmentationClass PNGs are palette images whose indices are the ids,
# with 255 on object borders (ignored).
# ---------------------------------------------------------------------------------------------------------------
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------------------------
# COCO-Stuff 164k: 80 things + 91 stuff = 171 classes. The stuffthingmaps PNGs hold COCO category id - 1 (0..181)
# with 11 ids that have no class (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90) and 255 unlabelled.
# ---------------------------------------------------------------------------------------------------------------
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet",
    "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table",
    "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)  # fmt: skip

COCO_STUFF_UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_TO_TRAIN = {
    src: dst for dst, src in enumerate(i for i in range(182) if i not in COCO_STUFF_UNUSED_IDS)
}  # 182 stuffthingmaps ids -> 0..170
COCO_STUFF_TO_TRAIN_LUT = lookup_table(COCO_STUFF_TO_TRAIN)

# ---------------------------------------------------------------------------------------------------------------
# Presets: the paper recipe (SegFormer configs) for each dataset.
# ---------------------------------------------------------------------------------------------------------------
DATASETS: dict[str, DatasetInfo] = {
    "ade20k": DatasetInfo(
        name="ade20k",
        class_names=ADE20K_CLASSES,
        palette=_colours("".join(_ADE20K_COLOURS)),
        scale=(2048, 512),
        crop=(512, 512),
        test=InferenceOptions(scale=(2048, 512), size_divisor=32),  # the official AlignedResize
        tta_scales=(0.75, 0.875, 1.0, 1.125, 1.25),
    ),
    "cityscapes": DatasetInfo(
        name="cityscapes",
        class_names=CITYSCAPES_CLASSES,
        palette=_colours(_CITYSCAPES_COLOURS),
        scale=(2048, 1024),
        crop=(1024, 1024),
        test=InferenceOptions(mode="slide", scale=(2048, 1024), crop=(1024, 1024), stride=(768, 768)),
        tta_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
    ),
    "voc": DatasetInfo(
        name="voc",
        class_names=VOC_CLASSES,
        palette=voc_palette(len(VOC_CLASSES)),
        scale=(2048, 512),
        crop=(512, 512),
        test=InferenceOptions(scale=(2048, 512)),
        tta_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    ),
    "coco-stuff": DatasetInfo(
        name="coco-stuff",
        class_names=COCO_STUFF_CLASSES,
        palette=_colours("".join(_COCO_STUFF_COLOURS)),
        scale=(2048, 512),
        crop=(512, 512),
        test=InferenceOptions(scale=(2048, 512)),
        tta_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    ),
}


def protocol_for_classes(class_names: tuple[str, ...] | None) -> InferenceOptions | None:
    """The paper's test protocol of the standard dataset whose classes these are (official/hub checkpoints)."""
    info = next((d for d in DATASETS.values() if class_names and tuple(class_names) == d.class_names), None)
    return info.test_protocol if info is not None else None


def folder_info(
    class_names: tuple[str, ...] | list[str], name: str = "folder", colours: np.ndarray | None = None
) -> DatasetInfo:
    """A DatasetInfo for a custom image/mask folder: `colours` (K, 3) or generated ones, the ADE-like 512 recipe."""
    from ..imageio import default_palette

    names = tuple(class_names)
    colours = default_palette(len(names)) if colours is None else colours
    palette = tuple(tuple(int(v) for v in c) for c in colours)
    return DatasetInfo(name=name, class_names=names, palette=palette)  # type: ignore[arg-type]
