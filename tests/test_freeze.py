"""--freeze-encoder / --freeze-stages: frozen parameters stay out of the optimiser and keep their pretrained values
bit for bit; the head still trains, and the saved model is complete."""

from __future__ import annotations

import pytest
import torch

import segformer
from segformer.cli import main
from segformer.training import param_groups
from segformer.training.optim import freeze_encoder_stages
from test_train import make_folder, tiny_segformer


def _pretrained(tmp_path):
    torch.manual_seed(7)
    source = segformer.create_model("b0", num_classes=5)
    return source, source.save_pretrained(tmp_path / "pretrained")


def _train(tmp_path, pretrained, *extra: str):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    out = tmp_path / "run"
    args = [
        "train", "--model", "b0", "--pretrained", str(pretrained), "--dataset", "folder", "--data-root", str(data),
        "--out", str(out), "--iters", "2", "--batch-size", "2", "--crop", "64", "--scale", "80x72",
        "--num-workers", "0", "--warmup-iters", "0", "--lr", "1e-3", "--eval-every", "0", *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return segformer.load_model(out / "final"), torch.load(out / "last.pt", weights_only=True)


def test_freeze_encoder_keeps_the_pretrained_encoder_bit_identical_and_trains_the_head(tmp_path):
    source, folder = _pretrained(tmp_path)
    model, state = _train(tmp_path, folder, "--freeze-encoder")
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    fresh = segformer.create_model("b0", num_classes=3)
    assert set(model.state_dict()) == set(fresh.state_dict())  # the saved model is complete
    assert all(torch.isfinite(v).all() for v in model.head.state_dict().values() if v.is_floating_point())
    # The head moved away from where it started: the optimiser holds only head parameters and stepped them.
    groups = state["optimizer"]["param_groups"]
    assert {g["name"] for g in groups} == {"head"}
    steps = [s["step"] for s in state["optimizer"]["state"].values()]
    assert len(steps) == sum(1 for _ in model.head.parameters()) and all(float(s) == 2 for s in steps)


def test_freeze_stages_freezes_only_the_first_k(tmp_path):
    source, folder = _pretrained(tmp_path)
    model, _ = _train(tmp_path, folder, "--freeze-stages", "2")
    for i, (ours, theirs) in enumerate(zip(model.encoder.stages, source.encoder.stages, strict=True)):
        theirs_sd = theirs.state_dict()
        same = all(torch.equal(value, theirs_sd[key]) for key, value in ours.state_dict().items())
        assert same == (i < 2), i


def test_frozen_parameters_are_not_in_any_group_and_bad_counts_fail():
    model = tiny_segformer()
    frozen = freeze_encoder_stages(model, 1)
    assert frozen == sum(p.numel() for p in model.encoder.stages[0].parameters())
    in_groups = {id(p) for g in param_groups(model, 1e-3, 0.01) for p in g["params"]}
    assert not in_groups & {id(p) for p in model.encoder.stages[0].parameters()}
    assert {id(p) for p in model.encoder.stages[1].parameters()} <= in_groups
    with pytest.raises(ValueError, match="the model has 4"):
        freeze_encoder_stages(model, 5)
