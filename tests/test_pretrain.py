"""`segformer pretrain`: a generated class-folder set of textures learns on the CPU with PVTv2's recipe (timm's
parts), a run cut short and resumed ends bitwise equal to an uninterrupted one, and `train --pretrained RUN/final`
takes the encoder with its licence record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segformer import create_model
from segformer.cli import main
from segformer.training import pretrain as P

TINY = {"embed_dims": [16, 32, 40, 64], "depths": [1, 1, 1, 1], "decoder_dim": 32}
SMALL = ["--img-size", "32", "--eval-resize", "36", "--num-workers", "0", "--warmup-epochs", "1", "--lr", "2e-3"]


def textures(root: Path, per_class: int = 24, val: int = 8, size: int = 48, seed: int = 0) -> Path:
    """Four texture classes (stripes across, stripes down, checks, rings), each in shades of its own colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    kinds = {
        "hstripes": ((200, 60, 60), lambda f, p: np.sin(yy * f + p)),
        "vstripes": ((60, 200, 60), lambda f, p: np.sin(xx * f + p)),
        "checks": ((60, 60, 200), lambda f, p: np.sign(np.sin(yy * f + p) * np.sin(xx * f + p))),
        "rings": ((200, 200, 60), lambda f, p: np.sin(np.hypot(yy - size / 2, xx - size / 2) * f + p)),
    }
    for split, n in (("train", per_class), ("val", val)):
        for name, (colour, make) in kinds.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                wave = (make(rng.uniform(0.5, 1.2), rng.uniform(0, 6.3))[..., None] + 1) / 2
                dark, light = np.array(colour) * rng.uniform(0.3, 0.6), np.array(colour) * rng.uniform(0.9, 1.2)
                image = dark + (light - dark) * wave + rng.normal(0, 12, (size, size, 3))
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return textures(tmp_path_factory.mktemp("textures"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_textures_learn_with_the_default_recipe(data, tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--model", str(tiny), "--data-root", str(data), "--out", str(out), *SMALL]
    assert main([*args, "--epochs", "5", "--batch-size", "16", "--log-every", "5", "--eval-every", "5"]) == 0
    records = history(out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-2:]) < losses[0] - 0.15  # soft-target loss of mixed images: falls, stays above 0
    assert records[-1]["top1"] > 0.6  # chance: 0.25
    assert "top-1" in capsys.readouterr().out
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["segformer_licence"]["origin"] == "own"
    assert "pretrained by you" in config["segformer_licence"]["history"][0]
    assert set(load_file(final / "model.safetensors")) >= {"classifier.weight", "encoder.stages.0.norm.weight"}
    assert (out / "curves.png").is_file() and (out / "last.pt").is_file()
    assert json.loads((out / "pretrain_config.json").read_text())["auto_augment"] == "rand-m9-mstd0.5-inc1"


def test_train_takes_the_pretrained_encoder(data, tiny, tmp_path):
    out = tmp_path / "pre"
    pre = ["pretrain", "--model", str(tiny), "--data-root", str(data), "--out", str(out), *SMALL]
    assert main([*pre, "--epochs", "1", "--batch-size", "16", "--eval-every", "0"]) == 0
    weights = load_file(out / "final" / "model.safetensors")
    model = create_model("auto", num_classes=3, pretrained=out / "final")
    assert model.config.embed_dims == (16, 32, 40, 64) and model.config.licence["origin"] == "own"
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, weights["encoder." + key]), key
    seg = make_segmentation(tmp_path / "seg")
    run = tmp_path / "seg_run"
    args = ["train", "--model", "auto", "--pretrained", str(out / "final"), "--dataset", "folder"]
    args += ["--data-root", str(seg), "--out", str(run), "--crop", "32", "--scale", "48x48", "--batch-size", "2"]
    assert main([*args, "--num-workers", "0", "--iters", "2", "--eval-every", "0", "--warmup-iters", "0"]) == 0
    record = json.loads((run / "final" / "config.json").read_text())["segformer_licence"]
    assert record["origin"] == "own" and record["history"][-1].startswith("fine-tuned on folder")


def make_segmentation(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            mask = (rng.random((48, 48)) > 0.5).astype(np.uint8)
            Image.fromarray((mask[..., None] * 200).repeat(3, 2).astype(np.uint8)).save(
                root / "images" / split / f"{i}.png"
            )
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


@pytest.mark.slow
def test_resume_after_a_kill_is_bitwise(data, tiny, tmp_path, monkeypatch):
    """A run that dies after its step-4 checkpoint (at step 5, before the optimiser step), resumed, ends with the
    weights and log of the uninterrupted run, bit for bit."""
    settings = {"model": str(tiny), "data_root": str(data), "img_size": 32, "eval_resize": 36, "epochs": 2}
    settings.update(
        num_workers=0, batch_size=8, save_every=4, eval_every=1, log_every=1, deterministic=True, warmup_epochs=1
    )
    whole = P.pretrain(P.PretrainConfig(out=str(tmp_path / "whole"), **settings))
    step = P._step

    def dies_at_step_5(run, batches):
        if run.step == 4:
            raise KeyboardInterrupt("killed")
        return step(run, batches)

    monkeypatch.setattr(P, "_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(P.PretrainConfig(out=str(tmp_path / "cut"), **settings))
    monkeypatch.setattr(P, "_step", step)
    resumed = P.pretrain(P.PretrainConfig(out=str(tmp_path / "cut"), resume=True, **settings))
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda records: [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in records]  # noqa: E731
    assert drop(history(tmp_path / "cut")) == drop(history(tmp_path / "whole"))
    assert (resumed.top1, resumed.top5) == (whole.top1, whole.top5)


def test_bad_image_is_named_and_skipped_or_an_error(data, tiny, tmp_path, caplog):
    root = tmp_path / "bad"
    for split in ("train", "val"):
        for folder in (data / split).iterdir():
            (root / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:4]:
                (root / split / folder.name / f.name).write_bytes(f.read_bytes())
    (root / "train" / "rings" / "broken.png").write_bytes(b"not a png")
    settings = {"model": str(tiny), "data_root": str(root), "img_size": 32, "eval_resize": 36, "epochs": 1}
    settings.update(
        num_workers=0, batch_size=17, repeated_aug=1, warmup_epochs=0, mixup=0, cutmix=0
    )  # every image in the one step
    P.pretrain(P.PretrainConfig(out=str(tmp_path / "skip"), **settings))
    assert any("broken.png: not a readable image" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=r"broken.png: not a readable image .*--bad-images skip"):
        P.pretrain(P.PretrainConfig(out=str(tmp_path / "error"), bad_images="error", **settings))


def test_recipe_defaults_follow_pvtv2():
    c = P.PretrainConfig(model="b3").resolved(world=8)
    assert c.lr == pytest.approx(1e-3) and c.drop_path_rate == 0.3 and c.clip_grad == 1.0 and c.amp == "none"
    c = P.PretrainConfig(model="b2-paper", batch_size=64).resolved(world=2, device_type="cuda")
    assert c.lr == pytest.approx(1e-3 * 128 / 1024) and c.drop_path_rate == 0.1 and c.clip_grad == 0 and c.amp == "fp16"
    assert (c.epochs, c.warmup_epochs, c.warmup_lr, c.min_lr, c.weight_decay) == (300, 5, 1e-6, 1e-5, 0.05)
    assert (c.mixup, c.cutmix, c.smoothing, c.repeated_aug, c.reprob) == (0.8, 1.0, 0.1, 3, 0.25)


@pytest.mark.slow
def test_two_process_gloo_matches_one_process_at_the_same_global_batch(data, tiny, tmp_path):
    """torchrun, 2 processes of batch 4 against 1 of batch 8: the same samples, augmented alike (seeded by their
    global position), gradients averaged by DDP. Mixup and DropPath off: they mix and drop within each process's
    batch, which differs by construction."""
    import os
    import subprocess
    import sys

    common = ["--model", str(tiny), "--data-root", str(data), *SMALL, "--epochs", "1", "--mixup", "0", "--cutmix", "0"]
    common += ["--drop-path-rate", "0", "--eval-every", "0", "--device", "cpu", "--lr", "2e-4", "--warmup-epochs", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    two = subprocess.run(
        [*launch, "segformer", "pretrain", *common, "--out", str(tmp_path / "two"), "--batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(["pretrain", *common, "--out", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    P._seed_everything(0)  # the run's seed: its initial weights
    init = P.build_model(P.PretrainConfig(model=str(tiny), drop_path_rate=0.0), 4)
    assert max((a[k] - v).abs().max().item() for k, v in init.state_dict().items()) > 1e-3  # it trained
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
