"""`segformer pretrain`: ImageNet-style classification of any MiT variant, PVTv2's recipe by default.

NVIDIA never released MiT's pretraining; the authors point to PVTv2's settings (NVlabs/SegFormer#39, #67, #97), which
whai362/PVT `classification/` takes from DeiT. Every part comes from timm, not re-written: `create_transform`
(RandAugment rand-m9-mstd0.5-inc1, bicubic, random erasing 0.25), `Mixup` + `SoftTargetCrossEntropy`,
`RepeatAugSampler` (x3), `create_optimizer_v2` (AdamW, no decay on norms and biases), `CosineLRScheduler` (per
epoch, warmup from 1e-6), `create_dataset` (ImageNet folders, `hfds/` Hugging Face datasets, `wds/` webdataset).

Determinism: each sample's augmentation is seeded from (seed, epoch, position in the epoch) and each step's mixup
and DropPath from (seed, rank, step), so a run resumed at any saved step repeats the uninterrupted one (bitwise with
`deterministic`), whatever the number of DataLoader workers. Checkpoints (`last.pt`, `previous.pt`), metrics.jsonl
and the distributed set-up are `train`'s (`checkpoint.py`, `records.py`, `distributed.py`, `signals.py`).
The result, RUN/final, is an encoder `segformer train --pretrained RUN/final` takes, with its licence record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..constants import MEAN, STD
from ..fileio import atomic_folder
from ..model import licence as lic
from ..model.classifier import MiTClassifier
from ..model.config import SegFormerConfig, variant_key
from ..runtime import autocast, import_timm, resolve_device
from ..visualize import plot_curves
from . import distributed as D
from .checkpoint import find_resume_checkpoint, load_resume_checkpoint, rng_state, save_checkpoint
from .records import RunRecords
from .signals import StopRequest

log = logging.getLogger("segformer")


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run; the defaults are PVTv2's ImageNet recipe (None: derived, see fields)."""

    model: str = "b0"  # any variant (b0..b5, b0-paper..b4-paper) or a SegFormerConfig .json/.yaml file
    dataset: str = ""  # timm's create_dataset name: "" = class folders, "hfds/NAME", "wds/NAME", "tfds/NAME"
    data_root: str | None = None  # ImageNet-style ROOT/train/CLASS/*.jpg and ROOT/val/CLASS/*.jpg, or a data dir
    dataset_title: str | None = None  # the data as the licence record names it (default: dataset or folder name)
    train_split: str = "train"
    val_split: str = "val"
    out: str = "runs/pretrain"
    epochs: int = 300
    batch_size: int = 128  # per process; global batch = batch_size * processes * grad_accum
    grad_accum: int = 1
    lr: float | None = None  # None: lr_base * global batch / lr_base_size (linear scaling)
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    drop_path_rate: float | None = None  # None: 0.1 for b0-b2, 0.3 for b3-b5
    clip_grad: float | None = None  # None: 1.0 for b3-b5, off for b0-b2; 0 = off
    img_size: int = 224
    eval_resize: int = 256  # eval: resize the short side to this, centre crop img_size
    interpolation: str = "bicubic"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    repeated_aug: int = 3  # repeats of each image per epoch (RepeatAugSampler); 1 = off
    amp: str = "auto"  # auto (fp16 on CUDA, none on CPU), none, bf16, fp16
    num_workers: int = 4
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    save_every: int = 500  # steps between checkpoints (and at every epoch end)
    eval_every: int = 1  # epochs between top-1/top-5 evaluations; 0 = only at the end
    log_every: int = 50
    bad_images: str = "skip"  # skip (log the file, use the next image) or error
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self, world: int, device_type: str = "cpu") -> PretrainConfig:
        """The derived defaults made explicit: lr from the global batch, drop path and clipping from the variant."""
        big = (variant_key(self.model) or "").removesuffix("-paper") in ("b3", "b4", "b5")
        glob = self.batch_size * world * self.grad_accum
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else self.lr_base * glob / self.lr_base_size,
            drop_path_rate=self.drop_path_rate if self.drop_path_rate is not None else (0.3 if big else 0.1),
            clip_grad=self.clip_grad if self.clip_grad is not None else (1.0 if big else 0.0),
            amp=self.amp if self.amp != "auto" else ("fp16" if device_type == "cuda" else "none"),
        )


@dataclass
class PretrainResult:
    out: Path
    top1: float | None
    top5: float | None
    history: list[dict[str, Any]]


def _seed_everything(*parts: int, devices: bool = True) -> None:
    """Seed torch, numpy and Python's `random` (timm's augmentations use all three) from `parts`; with `devices` the
    GPUs' generators too (DropPath on a GPU), else only the CPU's (10x faster: per-sample augmentation)."""
    seed = int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])
    if devices:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


class SeededImages(torch.utils.data.Dataset):
    """A timm dataset's reader with its transform, indexed by (index, epoch, position): each sample's augmentation
    seeded from (seed, epoch, position). A bad image is named and skipped (the next one used), or raised."""

    def __init__(self, dataset: Any, transform: Any, seed: int, bad_images: str) -> None:
        self.reader, self.transform, self.seed, self.bad = dataset.reader, transform, seed, bad_images

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[Tensor, int]:
        index, epoch, position = item
        for _ in range(10):
            try:
                sample, target = self.reader[index]
                image = (sample if isinstance(sample, Image.Image) else Image.open(sample)).convert("RGB")
                break
            except (OSError, ValueError, SyntaxError) as e:
                name = self.reader.filename(index, absolute=True)
                if self.bad != "skip":
                    raise ValueError(f"{name}: not a readable image ({e}); remove it or pass --bad-images skip") from e
                log.warning("skipped %s: not a readable image (%s)", name, e)
                index = (index + 1) % len(self.reader)
        else:
            raise RuntimeError("10 unreadable images in a row: is the data folder right?")
        _seed_everything(self.seed, epoch, position, devices=False)
        return self.transform(image), int(target)


def epoch_order(sampler: Any, epoch: int) -> list[int]:
    """This process's sample indices of `epoch`, in order (the sampler's shuffle depends on the epoch only)."""
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def build_model(config: PretrainConfig, num_classes: int) -> MiTClassifier:
    """The classifier of `config.model`: a variant name or a SegFormerConfig file, `num_classes` outputs."""
    key = variant_key(config.model)
    if key is not None:
        cfg = SegFormerConfig.from_name(key, num_classes=num_classes, drop_path_rate=config.drop_path_rate)
    else:
        import yaml

        path = Path(config.model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model config (or give a variant like b0)")
        data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "variant"}
        cfg = SegFormerConfig.from_dict(data).replace(num_classes=num_classes, drop_path_rate=config.drop_path_rate)
    return MiTClassifier(cfg)


def build_data(config: PretrainConfig) -> tuple[Any, Any, Any, Any]:
    """(train dataset, val dataset or None, train transform, eval transform) from timm's readers and transforms."""
    timm = import_timm()
    from timm.data import create_dataset, create_transform

    if not config.data_root:
        raise ValueError("pretrain needs --data-root (a folder of class folders per split, or a dataset dir)")
    if not config.dataset and not (Path(config.data_root) / config.train_split).is_dir():
        raise FileNotFoundError(f"{Path(config.data_root) / config.train_split}: no such folder of class folders")
    del timm
    train_ds = create_dataset(config.dataset, root=config.data_root, split=config.train_split, is_training=True)
    val_ds = None
    if config.dataset or (Path(config.data_root) / config.val_split).is_dir():
        val_ds = create_dataset(config.dataset, root=config.data_root, split=config.val_split, is_training=False)
    train_tf = create_transform(
        config.img_size, is_training=True, auto_augment=config.auto_augment, interpolation=config.interpolation,
        color_jitter=config.color_jitter, re_prob=config.reprob, re_mode=config.remode, re_count=1,
        mean=tuple(m / 255 for m in MEAN), std=tuple(s / 255 for s in STD),
    )  # fmt: skip
    eval_tf = create_transform(
        config.img_size, is_training=False, interpolation=config.interpolation,
        crop_pct=config.img_size / config.eval_resize, mean=tuple(m / 255 for m in MEAN),
        std=tuple(s / 255 for s in STD),
    )  # fmt: skip
    return train_ds, val_ds, train_tf, eval_tf


def _num_classes(dataset: Any) -> int:
    reader = dataset.reader
    mapping = getattr(reader, "class_to_idx", None)
    if mapping:
        return len(mapping)
    return int(max(int(reader[i][1]) for i in range(len(reader)))) + 1


@dataclass
class _Run:
    """One pretraining run's parts, assembled by `_assemble`."""

    config: PretrainConfig
    device: torch.device
    run_dir: Path
    model: MiTClassifier
    net: nn.Module  # the model, wrapped for DDP with more than one process
    optimizer: Any
    scheduler: Any
    scaler: Any
    mixup: Any
    criterion: nn.Module
    sampler: Any
    train_set: SeededImages
    val_set: SeededImages | None
    records: RunRecords
    steps_per_epoch: int
    step: int = 0

    @property
    def main(self) -> bool:
        return D.is_main()


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain `config.model` as an ImageNet-style classifier; RUN/final is the encoder with its licence record."""
    device = resolve_device(config.device)
    own_group = D.init_distributed(device)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        run = _assemble(config, device)
        return _train(run)
    finally:
        torch.use_deterministic_algorithms(before)
        if own_group:
            D.cleanup()


def _assemble(config: PretrainConfig, device: torch.device) -> _Run:
    timm = import_timm()
    from timm.data import Mixup
    from timm.data.distributed_sampler import RepeatAugSampler
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    del timm
    world, rank = D.world_size(), D.rank()
    config = config.resolved(world, device.type)
    torch.use_deterministic_algorithms(config.deterministic)
    run_dir = Path(config.out)
    train_ds, val_ds, train_tf, eval_tf = build_data(config)
    num_classes = _num_classes(train_ds)
    _seed_everything(config.seed)
    model = build_model(config, num_classes).to(device)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay, eps=config.opt_eps
    )
    scheduler = CosineLRScheduler(
        optimizer, t_initial=config.epochs, lr_min=config.min_lr, warmup_t=config.warmup_epochs,
        warmup_lr_init=config.warmup_lr, t_in_epochs=True,
    )  # fmt: skip
    mixing = config.mixup > 0 or config.cutmix > 0
    mixup = (
        Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            prob=config.mixup_prob,
            switch_prob=config.mixup_switch_prob,
            label_smoothing=config.smoothing,
            num_classes=num_classes,
        )  # fmt: skip
        if mixing
        else None
    )
    criterion = (
        SoftTargetCrossEntropy()
        if mixing
        else (LabelSmoothingCrossEntropy(config.smoothing) if config.smoothing else nn.CrossEntropyLoss())
    )
    repeats = max(1, config.repeated_aug)
    # DeiT's RASampler: each process takes len/world of the repeated list (rounded down to 256s), so an epoch shows
    # about len images, each in `repeats` augmentations on different processes
    sampler = RepeatAugSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, num_repeats=repeats)
    per_step = config.batch_size * config.grad_accum
    steps = len(epoch_order(sampler, 0)) // per_step
    if steps < 1:
        raise ValueError(f"{config.data_root}: {len(train_ds)} images give no full batch of {per_step} per process")
    if mixup is not None and config.batch_size % 2:
        raise ValueError(f"batch_size {config.batch_size} must be even for mixup/cutmix (or pass --mixup 0 --cutmix 0)")
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    records = RunRecords(run_dir, write=False)
    return _Run(
        config, device, run_dir, model, net, optimizer, scheduler, scaler, mixup, criterion, sampler,
        SeededImages(train_ds, train_tf, config.seed, config.bad_images),
        SeededImages(val_ds, eval_tf, config.seed, config.bad_images) if val_ds is not None else None,
        records, steps,
    )  # fmt: skip


def _resume(run: _Run) -> None:
    """Continue from RUN/last.pt (or previous.pt): weights, optimiser, scaler, step; the same settings or an error."""
    path, state = load_resume_checkpoint(run.run_dir)
    saved = state["train_config"]
    for key in ("model", "batch_size", "grad_accum", "seed", "epochs", "repeated_aug", "dataset", "data_root"):
        if saved.get(key) != getattr(run.config, key):
            raise ValueError(
                f"{path}: was written with {key}={saved.get(key)!r} but this run has {key}="
                f"{getattr(run.config, key)!r}; resume with the same settings or start a new --out"
            )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.step = int(state["iteration"])
    log.info("resumed %s at step %d", path, run.step)


def _train(run: _Run) -> PretrainResult:
    config = run.config
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "pretrain_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    resumed = config.resume and find_resume_checkpoint(run.run_dir) is not None
    if resumed:
        _resume(run)
    run.records = RunRecords(run.run_dir, write=run.main, resumed_at=run.step if resumed else None)
    total = config.epochs * run.steps_per_epoch
    with StopRequest(install=D.world_size() == 1) as stop:
        while run.step < total:
            epoch, first = divmod(run.step, run.steps_per_epoch)
            run.scheduler.step(epoch)
            _train_epoch(run, epoch, first, stop)
            if stop.signal is not None:
                _save(run)
                log.warning("stopped at step %d by %s; continue with --resume", run.step, stop.name)
                return PretrainResult(run.run_dir, None, None, run.records.history)
            last = run.step >= total
            if last or (config.eval_every and (epoch + 1) % config.eval_every == 0):
                _evaluate_and_record(run, epoch)
    return _finish(run)


def _train_epoch(run: _Run, epoch: int, first: int, stop: StopRequest) -> None:
    """Steps `first`.. of `epoch`; saves every --save-every steps and at the epoch's end."""
    config = run.config
    order = epoch_order(run.sampler, epoch)
    per_step = config.batch_size * config.grad_accum
    # seeded by the position in the global order (rank r holds positions r, r + world, ...: RepeatAugSampler's
    # split), so any number of processes augments each sample of a global batch alike
    world, rank = D.world_size(), D.rank()
    items = [(index, epoch, position * world + rank) for position, index in enumerate(order)][first * per_step :]
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_size=config.batch_size, sampler=items, num_workers=config.num_workers, drop_last=True
    )
    batches = iter(loader)
    run.net.train()
    for _ in range(first, run.steps_per_epoch):
        start = time.perf_counter()
        loss = _step(run, [next(batches) for _ in range(config.grad_accum)])
        run.step += 1
        if run.step % config.log_every == 0 or run.step == 1:
            lr = run.optimizer.param_groups[0]["lr"]
            record = {"iter": run.step, "epoch": epoch, "loss": loss, "lr": lr}
            record["sec_per_iter"] = round(time.perf_counter() - start, 4)
            run.records.add(record, {"train/loss": loss, "train/lr": lr})
        if stop.signal is not None:
            return
        if run.step % config.save_every == 0 or run.step % run.steps_per_epoch == 0:
            _save(run)


def _step(run: _Run, micro_batches: list[tuple[Tensor, Tensor]]) -> float:
    """One optimiser step over the micro-batches; mixup and DropPath seeded from (seed, rank, step)."""
    config = run.config
    _seed_everything(config.seed, D.rank(), run.step, 1)
    total = 0.0
    for x, y in micro_batches:
        x, y = x.to(run.device), y.to(run.device)
        if run.mixup is not None:
            x, y = run.mixup(x, y)
        with autocast(run.device, config.amp):
            loss = run.criterion(run.net(x), y) / len(micro_batches)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {run.step}: the loss is {loss.item()}; lower --lr or use --amp none")
        run.scaler.scale(loss).backward()
        total += float(loss.detach())
    if config.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _save(run: _Run) -> None:
    if run.main:
        state = {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": {},  # the schedule is a function of the epoch: nothing to keep
            "scaler": run.scaler.state_dict(),
            "iteration": run.step,
            "rng": rng_state(run.device),  # unused on resume (every step is seeded), kept for load_checkpoint
            "train_config": run.config.to_dict(),
        }
        save_checkpoint(run.run_dir, state)
    D.barrier()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: SeededImages, batch_size: int, device: torch.device) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) on `dataset`, this process's share of it summed over processes."""
    from timm.utils import accuracy

    was = model.training
    model.eval()
    items = [(i, 0, i) for i in range(D.rank(), len(dataset), D.world_size())]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=items, num_workers=0)
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        logits = model(x.to(device))
        top1, top5 = accuracy(logits.float(), y.to(device), topk=(1, min(5, logits.shape[1])))
        sums += torch.tensor([float(top1) * len(y) / 100, float(top5) * len(y) / 100, len(y)], dtype=torch.float64)
    if D.world_size() > 1:
        torch.distributed.all_reduce(sums)
    model.train(was)
    return {"top1": float(sums[0] / max(sums[2], 1)), "top5": float(sums[1] / max(sums[2], 1))}


def _evaluate_and_record(run: _Run, epoch: int) -> None:
    if run.val_set is None:
        return
    metrics = evaluate(run.model, run.val_set, run.config.batch_size, run.device)
    run.records.add({"iter": run.step, "epoch": epoch, **metrics}, {f"val/{k}": v for k, v in metrics.items()})
    log.info("epoch %d: top-1 %.4f, top-5 %.4f", epoch, metrics["top1"], metrics["top5"])


def _finish(run: _Run) -> PretrainResult:
    evals = [r for r in run.records.history if "top1" in r]
    top1, top5 = (evals[-1]["top1"], evals[-1]["top5"]) if evals else (None, None)
    if run.main:
        save_encoder(run.model, run.run_dir / "final", run.config, {"top1": top1, "top5": top5})
        plot_curves(run.records.history, run.run_dir / "curves.png", metric="top1")
    D.barrier()
    return PretrainResult(run.run_dir, top1, top5, run.records.history)


def save_encoder(model: MiTClassifier, folder: Path, config: PretrainConfig, metrics: dict[str, Any]) -> Path:
    """RUN/final: the classifier's weights in our layout (`encoder.*`, `classifier.*`), config.json with the model
    config and the licence record, metrics.json and a short README; `segformer train --pretrained` takes it."""
    from safetensors.torch import save_file

    title = config.dataset_title or config.dataset or Path(str(config.data_root)).name
    record = lic.record("own", f"pretrained by you (segformer pretrain, {config.epochs} epochs) on {title}")
    model.config = model.config.replace(licence=record)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": "MiTClassifier", "segformer_config": model.config.to_dict(), "segformer_licence": record}
    readme = (
        f"# MiT encoder ({model.config.name}), pretrained by `segformer pretrain`\n\n"
        f"ImageNet-style classifier of {model.config.num_classes} classes trained on {title}; top-1 "
        f"{metrics.get('top1')}, top-5 {metrics.get('top5')}.\n\nUse it: `segformer train --model {model.config.name} "
        f"--pretrained {folder}`.\n\nLicence of the weights: {lic.summary(record)}.\n"
    )
    return atomic_folder(
        folder,
        {
            "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
            "config.json": lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
            "metrics.json": lambda p: p.write_text(json.dumps(metrics) + "\n", encoding="utf-8"),
            "README.md": lambda p: p.write_text(readme, encoding="utf-8"),
        },
    )
