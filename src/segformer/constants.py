"""Numbers every layer shares: the input normalisation and the label that means "not labelled"."""

from __future__ import annotations

# ImageNet mean/std on 0..255 RGB: what every published SegFormer checkpoint was trained with.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

# Mixed-precision modes (--amp, amp=): name -> the torch dtype autocast runs at (None = full precision). The one
# table of them; `runtime.autocast` enters it. Names only here, so the CLI can list them without importing torch.
AMP_DTYPES: dict[str, str | None] = {"none": None, "bf16": "bfloat16", "fp16": "float16"}

# Mask value that is never trained on or scored (mmseg's and transformers' convention).
IGNORE_INDEX = 255
