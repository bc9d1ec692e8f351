"""Loading every source and refusing bad ones with one clear line that names the file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference import hf_model, hf_to_official, hub_state_dict
from segformer import CheckpointError, SegFormerConfig, create_model, load_model
from segformer.model.convert import detect_format, from_ours, to_ours


@pytest.fixture(scope="module")
def official_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    hub = hub_state_dict(hf_model(SegFormerConfig.from_name("b0", num_classes=5)), folder / "hf")
    path = folder / "segformer.b0.pth"
    torch.save({"meta": {"CLASSES": tuple("abcde")}, "state_dict": hf_to_official(hub)}, path)
    return path


def _official(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _save_variant(tmp_path: Path, name: str, sd: dict) -> Path:
    path = tmp_path / name
    torch.save({"state_dict": sd}, path)
    return path


def test_key_maps_round_trip_exactly(official_file):
    sd = _official(official_file)
    ours = to_ours(sd)
    assert detect_format(ours) == ("ours", True)
    for fmt in ("official", "hf", "smp", "hf5"):
        there = from_ours(ours, fmt)
        assert detect_format(there) == (fmt, True)
        back = to_ours(there)
        assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # wrappers' prefixes are stripped: DDP and torch.compile
    wrapped = {"module._orig_mod." + k: v for k, v in ours.items()}
    assert to_ours(wrapped).keys() == ours.keys()


def test_num_classes_reinitialises_only_the_classifier(official_file, caplog):
    base = load_model(official_file)
    with caplog.at_level("WARNING", logger="segformer"):
        model = load_model(official_file, num_classes=3, class_names=("x", "y", "z"))
    assert "re-initialised the classifier" in caplog.text and "5 classes, asked for 3" in caplog.text
    assert model.head.classifier.out_channels == 3 and model.config.class_names == ("x", "y", "z")
    theirs, mine = base.state_dict(), model.state_dict()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine if not k.startswith("head.classifier"))


def test_licence_note_for_official_weights(official_file, caplog):
    import segformer.model.loading as loading

    loading._licence_shown = False
    with caplog.at_level("WARNING", logger="segformer"):
        load_model(official_file)
        load_model(official_file)
    assert caplog.text.count("non-commercial") == 1


def test_encoder_only_checkpoint_needs_create_model(official_file, tmp_path):
    backbone = {k: v for k, v in _official(official_file).items() if k.startswith("backbone.")}
    path = _save_variant(tmp_path, "mit.pth", backbone)
    with pytest.raises(CheckpointError, match=r"mit.pth: holds an encoder only .*create_model"):
        load_model(path)


# -- bad input: each error is one line that names the file --------------------------------------------------------


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert _one_line(e).startswith(f"{path}: not a PyTorch checkpoint")


def test_truncated_files(official_file, tmp_path):
    data = official_file.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_model(cut)
    assert _one_line(e).startswith(f"{cut}: not a PyTorch checkpoint, or a truncated one")
    folder = load_model(official_file).save_pretrained(tmp_path / "saved")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert _one_line(e).startswith(f"{weights}: not a readable safetensors file")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_with_code_is_refused_without_running(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": Payload()}}, f, protocol=protocol)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert _one_line(e).startswith(f"{path}: refused to load: the file holds pickled Python objects")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_other_architecture(tmp_path):
    path = _save_variant(tmp_path, "resnet.pth", {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(9)})
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert (
        _one_line(e)
        == f"{path}: not a SegFormer state dict (no known layout matches); first keys: ['conv1.weight', 'fc.bias']"
    )


def test_missing_extra_and_mismatched_keys(official_file, tmp_path):
    sd = _official(official_file)
    missing = dict(sd)
    del missing["backbone.block2.1.attn.q.weight"]
    with pytest.raises(CheckpointError) as e:
        load_model(_save_variant(tmp_path, "missing.pth", missing))
    assert (
        "missing.pth: does not fit this model: 1 missing keys ['encoder.stages.1.blocks.1.attn.q.weight']"
        in _one_line(e)
    )

    extra = dict(sd, **{"backbone.block1.0.attn.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError) as e:
        load_model(_save_variant(tmp_path, "extra.pth", extra))
    assert "extra.pth: 1 keys do not belong to a official SegFormer state dict" in _one_line(e)
    assert "backbone.block1.0.attn.extra.weight" in str(e.value)

    shape = dict(sd)
    shape["backbone.block2.0.mlp.fc1.weight"] = torch.zeros(100, 64)
    with pytest.raises(CheckpointError) as e:
        load_model(_save_variant(tmp_path, "shape.pth", shape))
    assert "shape.pth: does not fit this model: 1 shape mismatches (checkpoint vs model)" in _one_line(e)
    assert "encoder.stages.1.blocks.0.ffn.fc1.weight (100, 64) vs (256, 64)" in str(e.value)


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.pth: no such file or folder, and not a hub id"):
        load_model(str(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match=r"holds none of model.safetensors"):
        load_model(tmp_path)


def test_pretrained_of_another_variant_is_refused(official_file):
    with pytest.raises(
        CheckpointError, match=r"segformer.b0.pth: holds a b0 encoder .*does not fit b1: use --model b0"
    ):
        create_model("b1", pretrained=official_file)


# -- hub ids, through the real huggingface_hub cache, offline ------------------------------------------------------


def _run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segformer", *args], capture_output=True, text=True, env={**os.environ, **env}
    )


def test_hub_id_from_cache_offline_and_missing(official_file, tmp_path):
    cache = tmp_path / "hub"
    repo = cache / "models--nvidia--segformer-b0-finetuned-test"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    load_model(official_file).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    ok = _run_cli("info", "nvidia/segformer-b0-finetuned-test", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "variant b0" in ok.stdout and "5 classes" in ok.stdout
    assert "non-commercial" in ok.stderr

    bad = _run_cli("info", "nvidia/not-in-cache", env=env)
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("segformer info: error: nvidia/not-in-cache: could not get it from the Hugging Face hub")
    assert "pass a local file or folder" in last


def test_convert_cli_writes_a_loadable_folder(official_file, tmp_path):
    out = tmp_path / "converted"
    result = _run_cli("convert", str(official_file), str(out), env={})
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["id2label"]["4"] == "e"
    a, b = load_model(official_file), load_model(out)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
