"""Where a model's weights came from, and so under which licence they may be used: a record every model carries.

The record is a small JSON-friendly dict in `SegFormerConfig.licence` (config.json's `segformer_licence`):

    {"origin": "pvtv2", "history": ["PVTv2 ImageNet-1k encoder timm/pvt_v2_b2.in1k", "fine-tuned on ade20k"]}

`origin` names a row of ORIGINS; `history` says what was done, in order. A fine-tune keeps its starting point's
origin: weights derived from NVIDIA's stay non-commercial however long they are trained. Only the weights are
covered here; the library's code is Apache-2.0 whatever the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

NVIDIA_LINK = "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"
PVT_LINK = "https://github.com/whai362/PVT/blob/v2/LICENSE"
IMAGENET_TERMS = "ImageNet's terms of access also apply to weights trained on it"


class Origin(NamedTuple):
    """One starting point: the model card's front-matter fields, whether commercial use is allowed, and the text."""

    license: str  # the hub's `license:` identifier
    license_name: str | None  # with license "other": the name of the licence
    link: str | None
    commercial: bool | None  # None: not known, or the owner's to decide
    text: str


# origin -> what it means. The most restrictive first: combining two origins keeps the earlier row.
ORIGINS: dict[str, Origin] = {
    "nvidia": Origin(
        "other",
        "nvidia-source-code-license",
        NVIDIA_LINK,
        False,
        "non-commercial: the weights derive from NVIDIA's SegFormer/MiT release (NVIDIA Source Code License: "
        "research and evaluation use only)",
    ),
    "unknown": Origin(
        "unknown", None, None, None, "unknown: where these weights came from is not recorded; check their source"
    ),
    "pvtv2": Origin(
        "apache-2.0",
        None,
        PVT_LINK,
        True,
        "Apache-2.0: the encoder starts from the PVTv2 ImageNet-1k weights of the paper's authors (whai362/PVT, "
        f"timm/pvt_v2_*.in1k); {IMAGENET_TERMS}",
    ),
    "own": Origin(
        "unknown",
        None,
        None,
        True,
        "yours: the encoder was pretrained by you (segformer pretrain), no third-party weights; the licence is yours "
        "to set (your pretraining data's terms may apply)",
    ),
    "scratch": Origin(
        "unknown",
        None,
        None,
        True,
        "yours: trained from random initialisation, no third-party weights; the licence is yours to set (your "
        "training data's terms may apply)",
    ),
}


def record(origin: str, *history: str) -> dict[str, Any]:
    """A new licence record of `origin` (a key of ORIGINS) with what was done, in order."""
    if origin not in ORIGINS:
        raise ValueError(f"unknown weights origin {origin!r}; choose one of {', '.join(ORIGINS)}")
    return {"origin": origin, "history": [h for h in history if h]}


def origin_of(licence: Mapping[str, Any] | None) -> str:
    """The origin of a record; 'unknown' for none or an unreadable one (never more permissive than recorded)."""
    origin = (licence or {}).get("origin")
    return origin if origin in ORIGINS else "unknown"


def trained(licence: Mapping[str, Any] | None, dataset: str) -> dict[str, Any]:
    """The record of a model trained on `dataset` starting from weights with record `licence` (None: random)."""
    if licence is None:
        return record("scratch", f"trained from scratch on {dataset}")
    step = "trained from scratch" if origin_of(licence) == "scratch" else "fine-tuned"
    history = [*licence.get("history", []), f"{step} on {dataset}"]
    return {**dict(licence), "origin": origin_of(licence), "history": history}


def strictest(*origins: str) -> str:
    """The most restrictive of several origins (a model built from parts of each)."""
    order = list(ORIGINS)
    return min(origins, key=order.index) if origins else "unknown"


def summary(licence: Mapping[str, Any] | None) -> str:
    """One line for `segformer info`, the app and `push`: the licence, then the history."""
    text = ORIGINS[origin_of(licence)].text
    history = (licence or {}).get("history") or []
    return f"{text}. History: {'; '.join(history)}" if history else text


def card_fields(licence: Mapping[str, Any] | None) -> dict[str, str]:
    """The model card's front-matter licence fields."""
    row = ORIGINS[origin_of(licence)]
    out = {"license": row.license}
    if row.license_name:
        out["license_name"] = row.license_name
    if row.license == "other" and row.link:
        out["license_link"] = row.link
    return out


def commercial(licence: Mapping[str, Any] | None) -> bool | None:
    """False where commercial use is ruled out, True where no third party's weights rule it out, None unknown."""
    return ORIGINS[origin_of(licence)].commercial
