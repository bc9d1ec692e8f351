"""The licence record every model carries: set where weights are loaded, kept by a fine-tune, written to config.json
and the model card, shown by info, the app and push. Weights derived from NVIDIA's never come out permissive."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segformer import SegFormer, SegFormerConfig, create_model, load_model
from segformer.cli import main
from segformer.model import licence as lic
from segformer.model.convert import from_ours

# default heads (NVIDIA files omit them)
TINY = {"embed_dims": (8, 16, 40, 64), "depths": (1, 1, 1, 1), "decoder_dim": 32}


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def make_folder(root, n=4):
    """A folder dataset of 3 classes: a bright square (1) and a dark band (2) on grey (0)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((48, 48), np.uint8)
            y, x = rng.integers(4, 28, 2)
            mask[y : y + 16, x : x + 16] = 1
            mask[:6] = 2
            image = (np.array([[120] * 3, [230] * 3, [20] * 3])[mask] + rng.integers(-9, 9, (48, 48, 3))).clip(0, 255)
            Image.fromarray(image.astype(np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("grey\nsquare\nband\n")
    return root


def nvidia_checkpoint(path):
    """A full segmentation checkpoint in NVIDIA's layout (the NVlabs release's keys), random tiny weights."""
    model = SegFormer(SegFormerConfig(num_classes=3, **TINY))
    torch.save({"state_dict": from_ours(model.state_dict(), "official")}, path)
    return path


def test_fine_tune_of_nvidia_weights_stays_non_commercial_through_push(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    source = nvidia_checkpoint(tmp_path / "segformer.tiny.pth")
    out = tmp_path / "run"
    args = ["train", "--model", str(source), "--dataset", "folder", "--data-root", str(data), "--out", str(out)]
    args += ["--crop", "32", "--scale", "48x48", "--batch-size", "2", "--num-workers", "0", "--iters", "2"]
    assert main([*args, "--eval-every", "0", "--warmup-iters", "0", "--log-every", "1"]) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    record = config["segformer_licence"]
    assert record["origin"] == "nvidia" and record["history"][-1].startswith("fine-tuned on folder")
    card = (out / "final" / "README.md").read_text()
    assert front_matter(card)["license_name"] == "nvidia-source-code-license"
    capsys.readouterr()
    assert main(["push", str(out / "final"), "me/tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "licence: non-commercial" in printed and "would upload" in printed
    # A card edited to say Apache is refused: config.json still says NVIDIA.
    (out / "final" / "README.md").write_text(card.replace("license: other", "license: apache-2.0").replace(
        "license_name: nvidia-source-code-license", ""))  # fmt: skip
    assert main(["push", str(out / "final"), "me/tiny", "--dry-run"]) == 2
    assert "derive from NVIDIA's (non-commercial" in capsys.readouterr().err
    # A further fine-tune of the fine-tune: still NVIDIA's.
    again = load_model(out / "final")
    assert lic.origin_of(again.config.licence) == "nvidia"
    assert lic.commercial(lic.trained(again.config.licence, "more")) is False


def test_records_of_each_starting_point(tmp_path):
    scratch = create_model("b0", num_classes=3, **TINY)
    assert scratch.config.licence == {"origin": "scratch", "history": []}
    assert lic.trained(scratch.config.licence, "ade20k")["history"] == ["trained from scratch on ade20k"]
    assert lic.trained(None, "voc")["origin"] == "scratch"
    pvt = lic.record("pvtv2", "PVTv2 ImageNet-1k weights timm/pvt_v2_b2.in1k")
    tuned = lic.trained(pvt, "cityscapes")
    assert lic.card_fields(tuned) == {"license": "apache-2.0"} and lic.commercial(tuned) is True
    assert "ImageNet's terms" in lic.summary(tuned) and "fine-tuned on cityscapes" in lic.summary(tuned)
    own = lic.trained(lic.record("own", "pretrained by you on textures"), "folder")
    assert lic.origin_of(own) == "own" and "pretrained by you on textures" in lic.summary(own)
    assert lic.card_fields(lic.record("nvidia"))["license_name"] == "nvidia-source-code-license"
    assert lic.strictest("pvtv2", "nvidia", "own") == "nvidia" and lic.origin_of({"origin": "bogus"}) == "unknown"
    with pytest.raises(ValueError, match="unknown weights origin 'mit'"):
        lic.record("mit")


def test_saved_card_and_config_carry_the_record(tmp_path, capsys):
    model = create_model("b0", num_classes=3, **TINY)
    model.config = model.config.replace(licence=lic.trained(lic.record("pvtv2", "PVTv2 weights x"), "ade20k"))
    model.save_pretrained(tmp_path / "m")
    meta = front_matter((tmp_path / "m" / "README.md").read_text())
    assert meta["license"] == "apache-2.0"
    assert "ImageNet's terms of access" in (tmp_path / "m" / "README.md").read_text()
    assert load_model(tmp_path / "m").config.licence == model.config.licence
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "licence: Apache-2.0" in capsys.readouterr().out


def test_app_facts_show_the_licence():
    from segformer.apps.app import ModelEntry, model_facts
    from segformer.imageio import default_palette

    model = create_model("b0", num_classes=3, **TINY).eval()
    model.config = model.config.replace(licence=lic.record("nvidia", "NVIDIA weights nvidia/mit-b0"))
    facts = model_facts(ModelEntry(model, "x", default_palette(3)))
    assert "- **licence**: non-commercial" in facts and "NVIDIA weights nvidia/mit-b0" in facts
