"""Training engine: recipe (param groups, schedule, presets), the CLI on every dataset layout, checkpoints,
exact resume after SIGKILL, non-finite loss, and bad input. The 2-process test is in test_train_dist.py."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.nn import functional as F

import segformer
from conftest import TINY_TRAIN, tiny_model_file
from segformer import InferenceOptions
from segformer.cli import main
from segformer.data import DATASETS
from segformer.model.config import SegFormerConfig
from segformer.model.segformer import SegFormer
from segformer.training import PRESETS, SCHEDULES, TrainConfig, lr_factor, param_groups, train
from segformer.training import build as build_module
from segformer.training.optim import build_optimizer, build_scheduler

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def synthetic_pair(rng: np.random.Generator, h: int = 72, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A learnable image/mask pair: a band on top (class 2), a disc (class 1), background (class 0)."""
    mask = np.zeros((h, w), np.uint8)
    cy, cx, r = rng.integers(12, h - 12), rng.integers(12, w - 12), rng.integers(8, 18)
    yy, xx = np.mgrid[:h, :w]
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    mask[: rng.integers(5, 14)] = 2
    image = COLOURS[mask].astype(np.int16) + rng.integers(-30, 30, (h, w, 3))
    return image.clip(0, 255).astype(np.uint8), mask


def make_folder(root: Path, n_train: int = 8, n_val: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        if not count:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = synthetic_pair(rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\ndisc\nband\n")
    return root


def tiny_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model", str(model), "--dataset", "folder", "--data-root", str(data), "--out", str(out),
        "--crop", "64", "--scale", "80x72", "--batch-size", "2", "--num-workers", "0", "--warmup-iters", "2",
        "--lr", "1e-3", "--log-every", "2", "--eval-every", "0",
        *extra,
    ]  # fmt: skip


def tiny_segformer(num_classes: int = 3) -> SegFormer:
    return SegFormer(SegFormerConfig(**TINY_TRAIN, num_classes=num_classes))


# ---------------------------------------------------------------------------------------------------- recipe


def test_param_groups_follow_official_paramwise_cfg():
    model = tiny_segformer()
    groups = {g["name"]: g for g in param_groups(model, lr=6e-5, weight_decay=0.01, head_lr_mult=10)}
    assert set(groups) == {"encoder", "encoder_no_decay", "head"}
    by_id = {id(p): name for name, g in groups.items() for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(by_id) == len(named)  # every parameter in exactly one group
    layer_norms = {
        f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm) for p in ("weight", "bias")
    }
    for name, p in named.items():
        group = by_id[id(p)]
        if name.startswith("head."):
            assert group == "head", name
        elif name in layer_norms:
            assert group == "encoder_no_decay", name
        else:
            assert group == "encoder", name
    # Decoder BN and biases keep weight decay; block, reduction, patch-embed and stage norms do not.
    assert by_id[id(model.head.bn.weight)] == "head" and by_id[id(model.head.classifier.bias)] == "head"
    assert by_id[id(model.encoder.stages[0].blocks[0].attn.q.bias)] == "encoder"
    for p in (model.encoder.stages[0].blocks[0].attn.norm.weight, model.encoder.stages[3].norm.bias):
        assert by_id[id(p)] == "encoder_no_decay"
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["head"]["weight_decay"] == 0.01
    assert groups["encoder"]["lr"] == pytest.approx(6e-5) and groups["encoder_no_decay"]["weight_decay"] == 0.0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_slab_wise_loss_equals_the_full_size_loss_and_its_gradient(monkeypatch, scale):
    from segformer.training import losses

    def full_size(logits, target):  # the paper's (and transformers') loss, literally
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, target, ignore_index=255, reduction="sum") / (target != 255).sum().clamp(min=1)

    for slab in (losses.SLAB_ELEMENTS, 1):  # one slab per image, and the smallest slabs: every border is exercised
        monkeypatch.setattr(losses, "SLAB_ELEMENTS", slab)
        logits = torch.randn(2, 5, 7, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 5, (2, 7 * scale, 9 * scale))
        target[torch.rand(target.shape) < 0.2] = 255
        ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        (3 * losses.segmentation_loss(ours, target)).backward()
        (3 * full_size(ref, target)).backward()
        torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=1e-12)
        want = float(full_size(ref.detach(), target))
        assert float(losses.segmentation_loss(ours.detach(), target)) == pytest.approx(want, rel=1e-12)
    ignored = torch.full((1, 8, 12), 255)  # nothing labelled: 0, not NaN, and no gradient
    logits = torch.randn(1, 3, 4, 6, requires_grad=True)
    loss = losses.segmentation_loss(logits, ignored)
    loss.backward()
    assert float(loss) == 0.0 and not logits.grad.any()
    bf16 = torch.randn(1, 3, 4, 6).bfloat16().requires_grad_()  # autocast logits: float32 loss, bf16 gradient
    losses.segmentation_loss(bf16, torch.randint(0, 3, (1, 16, 24))).backward()
    assert bf16.grad.dtype == torch.bfloat16
    odd = torch.randn(1, 3, 4, 6)  # 17 x 23 is no multiple of 4 x 6: the literal full-size path
    target = torch.randint(0, 3, (1, 17, 23))
    torch.testing.assert_close(losses.segmentation_loss(odd, target), full_size(odd, target))


def test_schedule_is_mmcv_warmup_then_poly():
    model = tiny_segformer()
    opt = build_optimizer(model, lr=6e-5, weight_decay=0.01)
    sched = build_scheduler(opt, max_iters=160_000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0)
    seen = {}
    for it in range(1502):
        seen[it] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert seen[0][0] == pytest.approx(6e-5 * 1e-6)  # warmup starts at lr * warmup_ratio
    regular = 6e-5 * (1 - 750 / 160_000)
    assert seen[750][0] == pytest.approx(regular * (1 - 0.5 * (1 - 1e-6)))
    assert seen[1500][0] == pytest.approx(6e-5 * (1 - 1500 / 160_000))  # warmup over: pure poly
    assert seen[1500][-1] == pytest.approx(10 * seen[1500][0])  # head group x10 throughout
    assert lr_factor(160_000, 160_000, 1500, 1e-6, 1.0, 0.0) == 0.0
    assert lr_factor(80_000, 160_000, 0, 1e-6, 2.0, 0.0) == pytest.approx(0.25)
    # min_lr is absolute, as in mmcv: every group ends at it.
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    sched = build_scheduler(opt, max_iters=10, warmup_iters=0, min_lr=1e-4)
    for _ in range(10):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4] * len(opt.param_groups))


def test_presets_yaml_round_trip_and_validation(tmp_path):
    ade = TrainConfig.from_preset("ade20k")
    assert (ade.lr, ade.weight_decay, ade.head_lr_mult, ade.warmup_iters, ade.warmup_ratio, ade.power) == (
        6e-5, 0.01, 10.0, 1500, 1e-6, 1.0,
    )  # fmt: skip
    assert (ade.iters, ade.batch_size, ade.crop, ade.scale, ade.min_lr) == (160_000, 16, (512, 512), (2048, 512), 0)
    city = TrainConfig.from_preset("cityscapes")
    assert (city.iters, city.batch_size, city.crop, city.scale) == (160_000, 8, (1024, 1024), (2048, 1024))
    coco = TrainConfig.from_preset("coco-stuff")
    assert (coco.iters, coco.batch_size, coco.crop) == (80_000, 16, (512, 512))
    assert set(PRESETS) == {"ade20k", "cityscapes", "coco-stuff", "voc"}
    config = TrainConfig.from_preset("cityscapes", iters=10, crop=[256, 512], clip_grad=1.0)
    config.save_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == config
    assert TrainConfig.from_dict({"lr": "6e-5"}).lr == 6e-5  # YAML 1.1 reads 6e-5 as a string
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="unknown field 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="crop"):
        TrainConfig.from_dict({"crop": [512]})


def test_cli_layers_preset_config_file_and_flags(tmp_path):
    from segformer.cli import train as train_cli

    (tmp_path / "c.yaml").write_text("dataset: cityscapes\niters: 100\nlr: 1e-4\ncrop: [256, 256]\n")
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--lr", "2e-4", "--clip-grad", "none"])
    config = train_cli.resolve_config(args)
    assert config.dataset == "cityscapes" and config.batch_size == 8  # from the preset
    assert config.iters == 100 and config.crop == (256, 256)  # from the file
    assert config.lr == 2e-4 and config.clip_grad is None  # flags win


def test_short_schedule_sets_what_it_says_and_leaves_the_paper_presets_alone(tmp_path):
    from segformer.cli import train as train_cli

    # The paper's presets are exactly the paper's, with or without a schedule defined next to them.
    assert PRESETS == {
        "ade20k": {"iters": 160_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
        "cityscapes": {"iters": 160_000, "batch_size": 8, "crop": (1024, 1024), "scale": (2048, 1024)},
        "coco-stuff": {"iters": 80_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
        "voc": {"iters": 40_000, "batch_size": 16, "crop": (512, 512), "scale": (2048, 512)},
    }
    paper = ((0.5, 2.0), True, 1500, 10.0, 6e-5, 1e-6, 1.0, 0.75, 0.5)
    for name in (*PRESETS, "folder"):
        config = TrainConfig.from_preset(name)
        assert config.schedule is None
        assert (
            config.ratio_range, config.photometric, config.warmup_iters, config.head_lr_mult, config.lr,
            config.warmup_ratio, config.power, config.cat_max_ratio, config.flip_prob,
        ) == paper  # fmt: skip

    # --schedule short sets its table's fields and nothing else.
    settings = {"ratio_range": (1.0, 1.0), "photometric": False, "warmup_iters": 0, "head_lr_mult": 10.0}
    assert SCHEDULES["short"] == settings
    short, plain = TrainConfig.from_preset("folder", schedule="short"), TrainConfig.from_preset("folder")
    changed = {k for k, v in short.to_dict().items() if v != plain.to_dict()[k]}
    assert changed == {"schedule", "ratio_range", "photometric", "warmup_iters"}  # head x10 is the paper's already
    assert {k: getattr(short, k) for k in settings} == settings
    ade = TrainConfig.from_preset("ade20k", schedule="short")  # over a dataset preset: the preset's size stays
    assert (ade.iters, ade.crop, ade.ratio_range, ade.warmup_iters) == (160_000, (512, 512), (1.0, 1.0), 0)

    # What training builds from it: no rescale jitter, no colour distortion, the full lr from the first iteration.
    transform = build_module.build_transform(short.replace(crop=(64, 64), scale=(80, 72)), None)
    assert (transform.ratio_range, transform.photometric, transform.flip_prob) == ((1.0, 1.0), None, 0.5)
    model = nn.Sequential(nn.Linear(2, 2))
    optimizer = build_optimizer(model, 1e-3, short.weight_decay, short.head_lr_mult)
    build_scheduler(optimizer, 100, short.warmup_iters, short.warmup_ratio, short.power, short.min_lr)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)

    # Layers: preset < schedule < config file < flags; YAML keeps the name and the values.
    (tmp_path / "c.yaml").write_text("ratio_range: [0.75, 1.5]\n")
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--dataset", "folder", "--schedule", "short", "--config", str(tmp_path / "c.yaml"), "--warmup-iters", "50"]
    )
    config = train_cli.resolve_config(args)
    assert (config.ratio_range, config.warmup_iters, config.photometric) == ((0.75, 1.5), 50, False)
    config.save_yaml(tmp_path / "run.yaml")
    assert TrainConfig.from_dict(yaml.safe_load((tmp_path / "run.yaml").read_text())) == config
    assert TrainConfig.from_dict({"schedule": "short"}) == short.replace(dataset=TrainConfig.dataset)
    with pytest.raises(ValueError, match="schedule='long'; choose one of short"):
        TrainConfig.from_preset("folder", schedule="long")


# ---------------------------------------------------------------------------------------------------- engine


class MemoryDataset:
    """Arrays in memory with a fixed-size random crop: what `train(train_dataset=...)` accepts."""

    num_classes = 3
    class_names = ("background", "disc", "band")

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = [synthetic_pair(rng) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int):
        image, mask = self.items[i]
        return image, mask, f"item{i}"

    @staticmethod
    def transform(image, mask, rng):
        y, x = rng.integers(0, image.shape[0] - 64 + 1), rng.integers(0, image.shape[1] - 64 + 1)
        image, mask = image[y : y + 64, x : x + 64], mask[y : y + 64, x : x + 64]
        return segformer.imageio.normalize(np.ascontiguousarray(image)), torch.from_numpy(mask.astype(np.int64))


def test_train_in_memory_loss_falls_and_writes_run_folder(tmp_path):
    config = TrainConfig(
        dataset="memory", out=str(tmp_path / "run"), iters=24, batch_size=4, lr=3e-3, warmup_iters=3,
        eval_every=12, save_every=12, log_every=6, num_workers=0,
    )  # fmt: skip
    result = train(config, model=tiny_segformer(), train_dataset=MemoryDataset(12, 0), val_dataset=MemoryDataset(3, 1))
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
    assert result.final_metrics is not None and 0 <= result.final_metrics["mIoU"] <= 1
    assert result.best_miou == max(r["mIoU"] for r in result.history if "mIoU" in r)
    run = result.out
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "best/model.safetensors",
        "final/config.json",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    assert TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())).num_classes == 3
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 24 and state["train_config"]["iters"] == 24
    from_ckpt, final = segformer.load_model(run / "last.pt"), segformer.load_model(run / "final")
    assert tuple(final.config.class_names) == MemoryDataset.class_names
    for key, value in final.state_dict().items():
        assert torch.equal(value, from_ckpt.state_dict()[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "mIoU" in r] == [12, 24]


def test_b0_trains_through_cli_on_64px_crops(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n_train=4, n_val=2)
    out = tmp_path / "run"
    code = main([
        "train", "--model", "b0", "--dataset", "folder", "--data-root", str(data), "--out", str(out),
        "--iters", "3", "--batch-size", "2", "--crop", "64", "--scale", "80x72", "--num-workers", "0",
        "--eval-every", "2", "--save-every", "2", "--log-every", "1",
    ])  # fmt: skip
    assert code == 0
    assert "final mIoU" in capsys.readouterr().out
    model = segformer.load_model(out / "final")
    assert model.config.name == "b0" and model.config.class_names == ("background", "disc", "band")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 6e-5 and saved["crop"] == [64, 64] and saved["num_classes"] == 3
    assert len([line for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]) == 3
    # The test protocol is saved with the model: predict (Segmenter) runs whole images at the training scale.
    assert model.config.test_protocol == InferenceOptions(mode="whole", scale=(80, 72))
    assert segformer.Segmenter(model).options.scale == (80, 72)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _ade(root: Path, rng: np.random.Generator) -> None:
    for i in range(2):
        image, mask = synthetic_pair(rng)
        _save(root / "images" / "training" / f"ADE_train_{i}.jpg", image)
        _save(root / "annotations" / "training" / f"ADE_train_{i}.png", mask + 1)  # 0 = "other", reduced away


def _cityscapes(root: Path, rng: np.random.Generator) -> None:
    for i in range(2):
        image, mask = synthetic_pair(rng)
        _save(root / "leftImg8bit" / "train" / "aachen" / f"aachen_{i}_leftImg8bit.png", image)
        _save(root / "gtFine" / "train" / "aachen" / f"aachen_{i}_gtFine_labelTrainIds.png", mask)


def _voc(root: Path, rng: np.random.Generator) -> None:
    names = []
    for i in range(2):
        image, mask = synthetic_pair(rng)
        _save(root / "JPEGImages" / f"2007_{i}.jpg", image)
        _save(root / "SegmentationClass" / f"2007_{i}.png", mask)
        names.append(f"2007_{i}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names) + "\n")


def _coco(root: Path, rng: np.random.Generator) -> None:
    for i in range(2):
        image, mask = synthetic_pair(rng)
        _save(root / "images" / "train2017" / f"{i:012d}.jpg", image)
        _save(root / "annotations" / "train2017" / f"{i:012d}_labelTrainIds.png", mask)


@pytest.mark.parametrize(
    ("dataset", "build", "classes"),
    [("ade20k", _ade, 150), ("cityscapes", _cityscapes, 19), ("voc", _voc, 21), ("coco-stuff", _coco, 171)],
)
def test_cli_trains_on_each_standard_layout(tmp_path, dataset, build, classes):
    build(tmp_path / "data", np.random.default_rng(0))
    model = tiny_model_file(tmp_path / "tiny.json")
    args = tiny_args(tmp_path / "data", tmp_path / "run", model, "--iters", "2", "--dataset", dataset)
    assert main(args) == 0
    saved = segformer.load_model(tmp_path / "run" / "final").config.test_protocol
    assert saved == DATASETS[dataset].test_protocol  # a standard dataset's model keeps the paper's protocol
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["dataset"] == dataset and saved["num_classes"] == classes
    assert saved["iters"] == 2 and saved["weight_decay"] == 0.01  # flags over the dataset preset
    assert segformer.load_model(tmp_path / "run" / "final").config.num_classes == classes


# ---------------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    data = make_folder(tmp_path / "data", n_train=6, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json", dropout=0.1)  # DropPath + dropout: the torch RNG matters
    extra = ("--iters", "16", "--save-every", "2", "--deterministic", "--seed", "3")
    assert main(tiny_args(data, tmp_path / "ref", model, *extra)) == 0

    killed = tmp_path / "killed"
    args = tiny_args(data, killed, model, *extra)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float reduction order
    proc = subprocess.Popen([sys.executable, "-m", "segformer", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "final").exists()
    state = torch.load(killed / "last.pt", weights_only=True)
    assert 0 < state["iteration"] < 16

    assert main(["train", "--out", str(killed), "--resume"]) == 0  # everything else from RUN_DIR/config.yaml
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    got = torch.load(killed / "last.pt", weights_only=True)
    assert got["iteration"] == ref["iteration"] == 16
    for key, value in ref["model"].items():
        assert torch.equal(value, got["model"][key]), key
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert losses(killed) == losses(tmp_path / "ref")  # the log was cut back to the checkpoint, not duplicated


def test_sigterm_saves_a_checkpoint_at_the_current_iteration_and_stops(tmp_path):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    args = tiny_args(data, run, model, "--iters", "500", "--save-every", "1000", "--log-every", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segformer", *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was signalled"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last_line = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM after iteration" in last_line and "--resume" in last_line
    stopped_at = int(last_line.split("after iteration ")[1].split(":")[0])
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == stopped_at < 500  # saved where it stopped, not at a --save-every multiple


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    calls = []

    def poisoned(logits, target):
        calls.append(1)
        loss = F.cross_entropy(F.interpolate(logits, size=target.shape[-2:], mode="bilinear"), target, ignore_index=255)
        return loss * math.nan if len(calls) >= 5 else loss

    monkeypatch.setattr(build_module, "build_loss", lambda spec, options: poisoned)
    args = tiny_args(data, tmp_path / "run", model, "--iters", "20", "--save-every", "2", "--log-every", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss at iteration 5" in err and "iteration 4" in err and "intact" in err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------------- bad input


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def test_bad_inputs_fail_with_one_clear_line(tmp_path, capsys, monkeypatch):
    data = make_folder(tmp_path / "data", n_train=2, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"

    def fails(args: list[str], *expected: str) -> None:
        assert main(args) == 2
        err = _error(capsys)
        assert err.startswith("segformer train: error:"), err
        for text in expected:
            assert text in err, err

    fails(tiny_args(tmp_path / "nowhere", run, model, "--iters", "1"), "nowhere", "does not exist")
    fails(tiny_args(data, run, model, "--dataset", "imagenet"), "unknown dataset 'imagenet'")
    fails(tiny_args(data, run, model, "--amp", "fp8"), "amp='fp8'")
    fails(tiny_args(data, run, model, "--schedule", "long"), "schedule='long'", "short")
    fails(tiny_args(data, run, tmp_path / "missing.json"), "missing.json")
    fails(tiny_args(data, run, model, "--iters", "1", "--eval-every", "1"), "--eval-every 0")
    (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
    fails(tiny_args(data, run, model, "--config", str(tmp_path / "bad.yaml")), "bad.yaml", "learning_rate")
    (tmp_path / "broken.yaml").write_text("iters: [1\n")
    fails(tiny_args(data, run, model, "--config", str(tmp_path / "broken.yaml")), "broken.yaml", "not valid YAML")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    fails(tiny_args(data, run, model, "--iters", "1", "--tensorboard"), "pip install tensorboard")
    monkeypatch.undo()

    assert main(tiny_args(data, run, model, "--iters", "2", "--save-every", "1")) == 0
    fails(tiny_args(data, run, model, "--iters", "2"), str(run), "--resume")  # never overwrite a run silently
    fails(tiny_args(data, run, model, "--iters", "4", "--resume", "--batch-size", "1"), "batch_size=2")
    for name in ("last.pt", "previous.pt"):  # checkpoints cut short (one alone: tests/test_survive.py)
        (run / name).write_bytes((run / name).read_bytes()[:1000])
    fails(tiny_args(data, run, model, "--iters", "4", "--resume"), "last.pt", "previous.pt", "truncated")

    bad = tmp_path / "data" / "masks" / "train" / "001.png"
    Image.fromarray(np.full((72, 80), 7, np.uint8)).save(bad)  # class 7 of 3
    fails(tiny_args(data, tmp_path / "run2", model, "--iters", "2"), "001.png", "--skip-bad-samples")
    assert main(tiny_args(data, tmp_path / "run3", model, "--iters", "2", "--skip-bad-samples")) == 0


# ---------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_clipping_accumulation_and_checkpointing_run(tmp_path, amp):
    config = TrainConfig(
        dataset="memory", out=str(tmp_path / "run"), iters=2, batch_size=2, grad_accum=2, lr=1e-3, warmup_iters=0,
        amp=amp, clip_grad=1.0, grad_checkpointing=True, eval_every=0, log_every=1, num_workers=0,
    )  # fmt: skip
    model = tiny_segformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(config, model=model, train_dataset=MemoryDataset(4, 0))
    assert all(math.isfinite(r["loss"]) for r in result.history) and len(result.history) == 2
    assert model.encoder.stages[0].grad_checkpointing
    assert not torch.equal(before["head.classifier.weight"], model.state_dict()["head.classifier.weight"])
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]
    assert ("scale" in scaler) == (amp == "fp16")  # the grad scaler is saved (and only exists) for fp16


def test_checkpoints_are_replaced_atomically_keeping_the_previous_one(tmp_path):
    from segformer.training.checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint

    def state(it: int) -> dict:
        return {"model": {"w": torch.full((2,), float(it))}, "optimizer": {}, "scheduler": {}, "iteration": it,
                "rng": {"states": [{"torch": torch.get_rng_state()}]}, "train_config": {}}  # fmt: skip

    assert find_resume_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, state(2))
    save_checkpoint(tmp_path, state(4))
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4
    assert load_checkpoint(tmp_path / "previous.pt")["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]  # no temp files left
    (tmp_path / "last.pt").unlink()  # a kill between the two renames
    assert find_resume_checkpoint(tmp_path) == tmp_path / "previous.pt"
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="not a segformer training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
