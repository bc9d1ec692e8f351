"""`train(config)`: the SegFormer training loop (single process, or DDP under torchrun).

Determinism and exact resume come from addressing data by position: sample `g` of the global stream (iteration
`it`, slot `j` of the global batch: g = it * global_batch + j) is image `perm(seed, epoch)[g % N]`, augmented
with `np.random.default_rng([seed, g])`. Nothing depends on how many processes or workers there are or on where
a run was interrupted; the torch RNG (DropPath, dropout) is saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SegFormerConfig
from ..model import SegFormer
from ..modelcard import training_card
from . import distributed as D
from .checkpoint import find_resume_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("segformer")

IGNORE_INDEX = 255


@dataclass
class TrainResult:
    """What a run produced: its folder, the best periodic/final mIoU, the final evaluation and the log records."""

    out: Path
    best_miou: float | None
    final_metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over labelled pixels, logits upsampled (bilinear) to the label size, as the original.

    A batch without any labelled pixel gives 0 (not NaN), so a crop of pure 'ignore' cannot stop a run.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp(min=1)
    return total / count


def resolve_device(name: str) -> torch.device:
    """'auto' -> this process's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", D.local_rank())
        torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------------------------------- data


class SampleStream(torch.utils.data.Dataset):
    """Global stream position g -> (image tensor, label tensor), independent of ranks, workers and restarts."""

    def __init__(self, dataset: Any, transform: Any, seed: int, skip_bad: bool) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.skip_bad = skip_bad
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:  # positions are unbounded; DataLoader only needs this for its repr
        return len(self.dataset)

    def index_of(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.dataset))
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, g: int) -> tuple[Tensor, Tensor]:
        from ..imageio import ImageReadError

        n = len(self.dataset)
        index = self.index_of(g)
        for _ in range(n):
            try:
                image, mask, _ = self.dataset.load(index)
                break
            except (ImageReadError, ValueError, OSError) as e:
                if not self.skip_bad:
                    raise ValueError(f"{e} (pass --skip-bad-samples to skip unreadable samples)") from None
                log.warning("skipping bad sample: %s", e)
                index = (index + 1) % n
        else:
            raise ValueError("every training sample failed to load")
        image, mask = self.transform(image, mask, np.random.default_rng([self.seed, g]))
        return torch.as_tensor(image), torch.as_tensor(mask).long()


class BatchPlan(torch.utils.data.Sampler):
    """Per micro-batch, this rank's slice of the global stream, from iteration `start` to `iters`."""

    def __init__(self, start: int, iters: int, batch_size: int, grad_accum: int, world: int, rank: int) -> None:
        self.start, self.iters = start, iters
        self.batch_size, self.grad_accum, self.world, self.rank = batch_size, grad_accum, world, rank

    def __len__(self) -> int:
        return (self.iters - self.start) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size
        global_batch = b * self.world * self.grad_accum
        for it in range(self.start, self.iters):
            for a in range(self.grad_accum):
                first = it * global_batch + a * b * self.world + self.rank * b
                yield list(range(first, first + b))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers are processes already; threads inside them only fight for cores


def _next_batch(batches: Iterator) -> tuple[Tensor, Tensor]:
    """The next batch; an error raised in a worker comes back as one line, not a worker traceback."""
    try:
        return next(batches)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        if len(lines) > 1 and "DataLoader worker" in lines[0]:
            last = lines[-1]
            raise ValueError(f"training data: {last.split(': ', 1)[-1]}") from None
        raise


# ---------------------------------------------------------------------------------------------------- setup


def _build_datasets(config: TrainConfig) -> tuple[Any, Any, Any]:
    """(train dataset, its transform, val dataset or None) from the config, via segformer.data."""
    from ..data import build_dataset

    if not config.data_root:
        raise ValueError("train config: data_root is not set; pass --data-root DIR")

    def load(split: str) -> Any:
        return build_dataset(
            config.dataset, config.data_root, split, num_classes=config.num_classes, skip_bad=config.skip_bad_samples
        )

    train_ds = load(config.train_split)
    transform = _make_transform(config, train_ds)
    try:
        val_ds = load(config.val_split)
    except (FileNotFoundError, ValueError) as e:  # no such split, or an empty one
        if config.eval_every:
            hint = f"no '{config.val_split}' split: pass --eval-every 0 to skip evaluation"
            raise type(e)(f"{e} ({hint})") from None
        log.info("no '%s' split in %s: training without evaluation", config.val_split, config.data_root)
        val_ds = None
    return train_ds, transform, val_ds


def _make_transform(config: TrainConfig, dataset: Any) -> Any:
    from ..data import TrainTransform

    info = getattr(dataset, "info", None)
    scale = config.scale or (info.scale if info is not None else None)
    crop = config.crop or (info.crop if info is not None else None)
    if scale is None or crop is None:
        raise ValueError("train config: crop and scale are unset and the dataset has no defaults; pass --crop/--scale")
    return TrainTransform(
        scale=tuple(scale),
        ratio_range=config.ratio_range,
        crop=tuple(crop),
        cat_max_ratio=config.cat_max_ratio,
        flip_prob=config.flip_prob,
        photometric=config.photometric,
    )


def build_model(config: TrainConfig, num_classes: int, class_names: tuple[str, ...] | None) -> SegFormer:
    """A fresh SegFormer for `config.model` (variant name or config file), encoder from `config.pretrained`."""
    from ..loading import create_model

    overrides: dict[str, Any] = {}
    if config.drop_path_rate is not None:
        overrides["drop_path_rate"] = config.drop_path_rate
    if config.classifier_dropout is not None:
        overrides["classifier_dropout"] = config.classifier_dropout
    if config.model.endswith((".json", ".yaml", ".yml")):
        import yaml

        path = Path(config.model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model config file (or pass a variant name like b0)")
        if config.pretrained is not None:
            raise ValueError("train config: pretrained weights need a variant name as model (b0..b5), not a file")
        data = yaml.safe_load(path.read_text())  # JSON is YAML
        data = {k: v for k, v in data.items() if k != "variant"}
        model_config = SegFormerConfig.from_dict(data).replace(
            num_classes=num_classes, class_names=class_names, **overrides
        )
        return SegFormer(model_config)
    return create_model(
        config.model, num_classes=num_classes, pretrained=config.pretrained, class_names=class_names, **overrides
    )


def _class_names(dataset: Any) -> tuple[str, ...] | None:
    names = getattr(dataset, "class_names", None)
    return tuple(str(n) for n in names) if names else None


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and record.get("iter", 0) <= upto:
            records.append(record)
    return records


def _write_history(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    *,
    model: SegFormer | None = None,
    train_dataset: Any = None,
    val_dataset: Any = None,
) -> TrainResult:
    """Train a SegFormer as `config` says; see the module docstring for the determinism contract.

    `model`, `train_dataset` and `val_dataset` replace what the config would build (in-memory data, custom
    models). A dataset needs `len()`, `load(i) -> (uint8 HWC image, uint8 HW mask, name)`, `num_classes` and
    `class_names`; its `transform` attribute, when set, is used instead of a TrainTransform built from the config.
    """
    device = resolve_device(config.device)
    own_group = D.init_distributed(device)
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        return _train(config, device, model, train_dataset, val_dataset)
    finally:
        torch.use_deterministic_algorithms(flags[0])  # leave the process as it was
        torch.backends.cudnn.benchmark = flags[1]
        if own_group:
            D.cleanup()


def _train(config: TrainConfig, device: torch.device, model: Any, train_ds: Any, val_ds: Any) -> TrainResult:
    world, rank, main = D.world_size(), D.rank(), D.is_main()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True

    run_dir = Path(config.out)
    resume_from = find_resume_checkpoint(run_dir) if config.resume else None
    if not config.resume and find_resume_checkpoint(run_dir) is not None:
        raise ValueError(f"{run_dir}: already holds a training checkpoint; pass --resume to continue it or pick --out")
    if config.resume and resume_from is None and main:
        log.info("%s: no checkpoint to resume from; starting from scratch", run_dir)

    # Data.
    if train_ds is None:
        train_ds, transform, built_val = _build_datasets(config)
        val_ds = val_ds if val_ds is not None else built_val
    else:
        transform = getattr(train_ds, "transform", None) or _make_transform(config, train_ds)
    if len(train_ds) == 0:
        raise ValueError(f"training set is empty ({config.dataset} at {config.data_root}, split {config.train_split})")
    num_classes = int(train_ds.num_classes)
    class_names = _class_names(train_ds)
    if config.num_classes is not None and config.num_classes != num_classes:
        raise ValueError(f"train config: num_classes={config.num_classes} but the dataset has {num_classes} classes")
    info = getattr(train_ds, "info", None)
    config = config.replace(
        num_classes=num_classes,
        crop=config.crop or (tuple(info.crop) if info is not None else None),
        scale=config.scale or (tuple(info.scale) if info is not None else None),
    )

    # Model, optimiser, schedule, scaler.
    torch.manual_seed(config.seed)  # identical initialisation on every rank
    if model is None:
        model = build_model(config, num_classes, class_names)
    elif model.config.num_classes != num_classes:
        raise ValueError(f"model has {model.config.num_classes} classes but the dataset has {num_classes}")
    elif model.config.class_names is None and class_names is not None:
        model.config = model.config.replace(class_names=class_names)  # saved with the model
    model = model.to(device).train()
    if config.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    if world > 1:
        model = D.convert_batchnorm(model, device)
        net: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        net = model
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.head_lr_mult)
    scheduler = build_scheduler(
        optimizer, config.iters, config.warmup_iters, config.warmup_ratio, config.power, config.min_lr
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

    # Resume.
    start, best_miou = 0, None
    torch.manual_seed(config.seed * 1000 + rank)  # DropPath/dropout differ across ranks
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        _check_compatible(resume_from, state["train_config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start, best_miou = int(state["iteration"]), state.get("best_miou")
        states = state["rng"].get("states", [])
        if len(states) == world:
            set_rng_state(states[rank], device)
        elif main:
            log.warning("%s was written by %d processes, now %d: RNG streams restart", resume_from, len(states), world)
        if main:
            log.info("resumed from %s at iteration %d", resume_from, start)

    history: list[dict[str, Any]] = []
    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save_yaml(run_dir / "config.yaml")
        history = _read_history(run_dir / "metrics.jsonl", start) if resume_from is not None else []
        _write_history(run_dir / "metrics.jsonl", history)
        if config.tensorboard:
            writer = _tensorboard(run_dir)
        log.info(
            "training %s on %s (%d images, %d classes) for %d iterations: global batch %d (%d x %d processes x %d "
            "accumulation), device %s, run folder %s",
            config.model,
            config.dataset,
            len(train_ds),
            num_classes,
            config.iters,
            config.batch_size * world * config.grad_accum,
            config.batch_size,
            world,
            config.grad_accum,
            device,
            run_dir,
        )

    stream = SampleStream(train_ds, transform, config.seed, config.skip_bad_samples)
    plan = BatchPlan(start, config.iters, config.batch_size, config.grad_accum, world, rank)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_sampler=plan,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if config.num_workers else None,
        generator=torch.Generator(),  # keeps the global torch RNG untouched by the loader
    )
    batches = iter(loader)

    from tqdm import tqdm

    bar = tqdm(total=config.iters, initial=start, disable=not main, desc="train", dynamic_ncols=True, unit="it")
    loss_sum = torch.zeros((), device=device)
    window = 0
    nonfinite_at = torch.full((), -1, dtype=torch.long, device=device)
    tick = time.perf_counter()
    last_saved = start if resume_from is not None else None

    def check_finite() -> None:
        bad = nonfinite_at.clone()
        if world > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if int(bad) >= 0:
            kept = f"the last good checkpoint {run_dir / 'last.pt'} (iteration {last_saved}) is intact"
            raise RuntimeError(
                f"non-finite loss at iteration {int(bad) + 1}: stopped without saving; "
                + (kept if last_saved is not None else "no checkpoint was written")
                + "; lower --lr, add --clip-grad, or use --amp bf16/none instead of fp16"
            )

    def snapshot(it_done: int) -> dict[str, Any]:
        rngs = D.gather_objects(rng_state(device))
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "iteration": it_done,
            "best_miou": best_miou,
            "rng": {"states": rngs},
            "config": model.config.to_dict(),
            "train_config": config.to_dict(),
        }

    def evaluate_now(it_done: int) -> dict[str, Any] | None:
        nonlocal best_miou
        if val_ds is None:
            return None
        metrics = _evaluate(model, val_ds, config, device)
        model.train()
        if main:
            record = {"iter": it_done, **{k: v for k, v in metrics.items() if k != "per_class"}}
            history.append(record)
            _append(run_dir / "metrics.jsonl", record)
            if writer is not None:
                for key in ("mIoU", "aAcc", "mAcc", "mDice"):
                    if key in metrics:
                        writer.add_scalar(f"val/{key}", metrics[key], it_done)
            log.info("iteration %d: mIoU %.4f aAcc %.4f", it_done, metrics["mIoU"], metrics.get("aAcc", math.nan))
            if best_miou is None or metrics["mIoU"] > best_miou:
                best_miou = float(metrics["mIoU"])
                model.save_pretrained(run_dir / "best", card=training_card(config, it_done, metrics))
        best_miou = D.broadcast_object(best_miou)
        return metrics

    stop = _StopRequest(install=world == 1)
    try:
        with warnings.catch_warnings():
            # fp16: the grad scaler skips steps whose gradients overflowed; the schedule still advances (as mmcv).
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for it in range(start, config.iters):
                for a in range(config.grad_accum):
                    images, targets = _next_batch(batches)
                    images = images.to(device, non_blocking=True)
                    targets = targets.to(device, non_blocking=True)
                    sync = world == 1 or a == config.grad_accum - 1
                    with net.no_sync() if not sync else contextlib.nullcontext():
                        with torch.autocast(
                            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                        ):
                            logits = net(images)
                        loss = segmentation_loss(logits, targets)
                        scaler.scale(loss / config.grad_accum).backward()
                    loss = loss.detach()
                    nonfinite_at = torch.where((nonfinite_at < 0) & ~torch.isfinite(loss), it, nonfinite_at)
                    loss_sum += loss / config.grad_accum
                if config.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                window += 1
                bar.update(1)
                done = it + 1
                last = done == config.iters

                if done % config.log_every == 0 or last:
                    check_finite()
                    if world > 1:
                        torch.distributed.all_reduce(loss_sum)
                        loss_sum /= world
                    now = time.perf_counter()
                    record = {
                        "iter": done,
                        "loss": float(loss_sum) / window,
                        "lr": lr,
                        "sec_per_iter": (now - tick) / window,
                    }
                    loss_sum.zero_()
                    window, tick = 0, now
                    if main:
                        history.append(record)
                        _append(run_dir / "metrics.jsonl", record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                        if writer is not None:
                            writer.add_scalar("train/loss", record["loss"], done)
                            writer.add_scalar("train/lr", lr, done)
                if config.eval_every and done % config.eval_every == 0 and not last:
                    check_finite()
                    evaluate_now(done)
                if (config.save_every and done % config.save_every == 0) or last:
                    check_finite()
                    state = snapshot(done)
                    if main:
                        save_checkpoint(run_dir, state)
                    last_saved = done
                if stop.signal is not None:
                    check_finite()
                    if last_saved != done:
                        state = snapshot(done)
                        if main:
                            save_checkpoint(run_dir, state)
                    raise RuntimeError(
                        f"stopped by {signal.Signals(stop.signal).name} after iteration {done}: saved "
                        f"{run_dir / 'last.pt'}; continue with --resume"
                    )
    finally:
        bar.close()  # before any error message, not after it
        stop.uninstall()

    if world > 1:
        _check_ranks_agree(model)
    final_metrics = evaluate_now(config.iters) if val_ds is not None else None
    result = TrainResult(out=run_dir, best_miou=best_miou, final_metrics=final_metrics, history=history)
    if main:
        if final_metrics is not None:  # best_miou may have changed: keep last.pt's copy current
            save_checkpoint(run_dir, snapshot(config.iters), keep_previous=False)
        model.save_pretrained(run_dir / "final", card=training_card(config, config.iters, final_metrics))
        if final_metrics is not None:
            (run_dir / "final" / "metrics.json").write_text(json.dumps(final_metrics, indent=2, default=float) + "\n")
        plot_curves(history, run_dir / "curves.png")
        if writer is not None:
            writer.close()
        log.info("done: %s (final/ and last.pt)%s", run_dir, f", best mIoU {best_miou:.4f}" if best_miou else "")
    elif final_metrics is not None:
        snapshot(config.iters)  # the RNG gather is collective: every rank takes part
    D.barrier()
    return result


def _evaluate(model: SegFormer, dataset: Any, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    from ..evaluation import evaluate

    info = getattr(dataset, "info", None)
    scale = config.scale or (tuple(info.scale) if info is not None else None)
    model.eval()
    with torch.no_grad():
        return evaluate(
            model,
            dataset,
            mode="whole",
            scale=scale,
            device=device,
            progress=False,
            max_samples=config.eval_max_samples,
        )


class _StopRequest:
    """SIGTERM/SIGINT (cluster preemption, Ctrl-C) in a single process: finish the iteration, save, stop.

    A second signal interrupts at once. Under torchrun the launcher owns the workers' signals, so nothing is
    installed there (checkpoints every --save-every bound the loss).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, install: bool) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        if install and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning(
            "%s received: stopping after this iteration (send it again to stop now)", signal.Signals(signum).name
        )

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _check_ranks_agree(model: nn.Module) -> None:
    """DDP keeps replicas bitwise identical; compare digests once at the end so a silent divergence cannot pass."""
    import hashlib

    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests = D.gather_objects(digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} processes ended with different weights (digests {digests})")


def _check_compatible(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume a checkpoint into a different model or data setup (the weights would not fit anyway)."""
    for key in ("model", "dataset", "num_classes", "batch_size", "grad_accum", "seed"):
        if key in saved and saved[key] != config.to_dict()[key]:
            raise ValueError(
                f"{path}: was written with {key}={saved[key]!r} but this run has {key}={config.to_dict()[key]!r}; "
                "resume with the same settings (RUN_DIR/config.yaml) or start a new --out"
            )
    if saved.get("iters", config.iters) != config.iters:
        log.warning(
            "%s: iters changed from %s to %d: the poly schedule is recomputed", path, saved["iters"], config.iters
        )


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and validation mIoU against iterations as a PNG; skipped (one log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'segformer[plot]')", path.name)
        return None
    train_pts = [(r["iter"], r["loss"]) for r in history if "loss" in r]
    val_pts = [(r["iter"], r["mIoU"]) for r in history if "mIoU" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train_pts:
        axes[0].plot(*zip(*train_pts, strict=True), color="tab:blue")
    axes[0].set(title="training loss", xlabel="iteration", ylabel="cross-entropy")
    if val_pts:
        axes[1].plot(*zip(*val_pts, strict=True), marker="o", color="tab:green")
    axes[1].set(title="validation mIoU", xlabel="iteration", ylabel="mIoU")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
