"""Model cards written by save_pretrained (hub format, training recipe and metrics, NVIDIA licence note) and
`segformer push` failing in one clear line offline or without a token."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import tiny_model_file
from segformer import InferenceOptions as Protocol
from segformer import create_model, load_model
from segformer.cli import main
from segformer.model.config import SegFormerConfig
from segformer.model.modelcard import model_card, training_card
from segformer.training import TrainConfig
from test_train import make_folder, tiny_args


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_pretrained_writes_a_hub_model_card(tmp_path):
    model = create_model("b0", num_classes=3, class_names=("sky", "road", "car|truck"))
    folder = model.save_pretrained(tmp_path / "m")
    text = (folder / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "segformer" and meta["pipeline_tag"] == "image-segmentation"
    assert "semantic-segmentation" in meta["tags"] and meta["license"] == "unknown"
    assert "model-index" not in meta and "base_model" not in meta  # no metrics, no known origin
    assert "# SegFormer-B0" in text
    total = model.num_parameters()["total"] / 1e6
    assert f"| parameters | {total:.2f} M" in text
    assert "| 2 | car\\|truck | `#" in text  # classes with their colours; table cells escaped
    assert "No protocol stored" in text
    assert "NVIDIA" not in text.split("## Citation")[0]
    from huggingface_hub import ModelCard

    assert ModelCard.load(folder / "README.md").data.library_name == "segformer"


def test_training_card_has_recipe_metrics_and_protocol():
    protocol = Protocol(mode="whole", scale=(2048, 512), size_divisor=32)
    config = SegFormerConfig.from_name("b0", num_classes=2, class_names=("a", "b"), test_protocol=protocol)
    train = TrainConfig(dataset="ade20k", iters=160, crop=(512, 512), scale=(2048, 512), pretrained="nvidia/mit-b0")
    metrics = {"mIoU": 0.4123, "aAcc": 0.8, "mAcc": math.nan, "mDice": 0.5, "per_class": {"a": {"IoU": 0.3}}}
    text = model_card(config, {**training_card(train, 120, metrics), "palette": [(1, 2, 3), (255, 0, 16)]})
    meta = front_matter(text)
    assert meta["datasets"] == ["scene_parse_150"] and meta["base_model"] == "nvidia/mit-b0"
    assert meta["license"] == "other" and meta["license_name"] == "nvidia-source-code-license"
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "ADE20K", "type": "scene_parse_150", "split": "val"}
    assert {"type": "mean_iou", "value": 41.23, "name": "mIoU"} in result["metrics"]
    assert all(m["name"] != "mAcc" for m in result["metrics"])  # NaN is left out, not written as .nan
    assert "| iterations | 120 of 160 |" in text and "`nvidia/mit-b0`" in text and "lr 6e-05" in text
    assert "| 41.23 | 80.00 | - | 50.00 |" in text and "| a | 30.00 | - |" in text
    assert "`#ff0010`" in text
    assert "--mode whole --scale 2048x512 --size-divisor 32" in text
    assert "non-commercial" in text
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    assert card.data.eval_results[0].metric_value == 41.23


def test_cli_training_writes_the_card_into_best_and_final(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_train=4, n_val=2)
    args = tiny_args(data, tmp_path / "run", tiny_model_file(tmp_path / "tiny.json"), "--iters", "4")
    assert main([*args, "--eval-every", "2"]) == 0
    for name in ("best", "final"):
        text = (tmp_path / "run" / name / "README.md").read_text()
        assert "Trained with `segformer train`" in text and "| encoder init | random (from scratch) |" in text
        assert "| 0 | background |" in text and "Last evaluation on folder val" in text
        assert "--mode whole --scale 80x72" in text
        assert front_matter(text)["model-index"][0]["results"][0]["metrics"][0]["name"] == "mIoU"
    assert "| iterations | 4 |" in (tmp_path / "run" / "final" / "README.md").read_text()
    # Loading and saving again keeps a card (without the recipe: that belongs to the training run).
    again = load_model(tmp_path / "run" / "final").save_pretrained(tmp_path / "copy")
    assert "## Classes" in (again / "README.md").read_text()


def test_weights_from_nvidia_carry_the_licence_note(tmp_path):
    from reference import hf_model, hf_to_official, hub_state_dict

    hub = hub_state_dict(hf_model(SegFormerConfig.from_name("b0", num_classes=5)), tmp_path / "hf")
    path = tmp_path / "segformer.b0.pth"
    torch.save({"meta": {"CLASSES": tuple("abcde")}, "state_dict": hf_to_official(hub)}, path)
    first = load_model(path).save_pretrained(tmp_path / "converted")
    meta = front_matter((first / "README.md").read_text())
    assert meta["license"] == "other" and meta["license_link"].startswith("https://github.com/NVlabs/SegFormer")
    # ... and keep it through another load/save from our own folder.
    second = load_model(first).save_pretrained(tmp_path / "again")
    assert "NVIDIA Source Code License" in (second / "README.md").read_text()


@pytest.fixture
def saved(tmp_path):
    return create_model("b0", num_classes=2, depths=(1, 1, 1, 1)).save_pretrained(tmp_path / "model")


def test_push_offline_fails_in_one_line(saved, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert main(["push", str(saved), "someone/segformer-test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segformer push: error: cannot push while offline (HF_HUB_OFFLINE is set); unset it where there "
                   "is internet"]  # fmt: skip


def test_push_without_token_fails_in_one_line(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored token
    assert main(["push", str(saved), "someone/segformer-test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token: run `hf auth login` or set HF_TOKEN" in err[0]


def test_push_needs_a_saved_model_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "someone/x"]) == 2
    assert "not a saved model folder (no config.json or model.safetensors)" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing"), "someone/x"]) == 2
    assert "no such folder" in capsys.readouterr().err
