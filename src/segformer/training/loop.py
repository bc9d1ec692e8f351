"""`train(config)`: the SegFormer training loop (single process, or DDP under torchrun); `train_step` is one step.

Determinism and exact resume come from addressing data by position (`segformer.data.sampling`): sample `g` of the
global stream (iteration `it`, slot `j` of the global batch: g = it * global_batch + j) is image
`perm(seed, epoch)[g % N]`, augmented with `np.random.default_rng([seed, g])`. Nothing depends on how many
processes or workers there are or on where a run was interrupted; the torch RNG (DropPath, dropout) is saved in
every checkpoint and restored on resume.

Rooms: the data come from `segformer.data` (`SampleStream`, `BatchPlan`, `train_loader`), datasets and model are
built in `build.py`, the loss is `losses.py`, the optimiser and schedule `optim.py`, checkpoints `checkpoint.py`,
the run's log `records.py`, SIGTERM handling `signals.py`, and the curves are drawn by `segformer.visualize`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.base import Dataset, SampleSource
from ..data.sampling import BatchPlan, SampleStream, next_batch, train_loader
from ..fileio import write_json
from ..model.modelcard import training_card
from ..model.segformer import SegFormer
from ..protocol import InferenceOptions
from ..runtime import autocast, compile_unavailable, resolve_device
from ..visualize import plot_curves
from . import distributed as D
from .build import (
    build_criterion,
    build_data,
    build_model,
    class_names,
    complete_config,
    num_classes_of,
    protocol_for_run,
    resolve_channels,
    training_transform,
    warn_unseen_classes,
)
from .checkpoint import (
    CHECKPOINT_NAME,
    check_compatible,
    find_resume_checkpoint,
    global_batch,
    load_resume_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig, default_num_workers, read_yaml
from .losses import segmentation_loss
from .optim import build_optimizer, build_scheduler, freeze_encoder_stages
from .records import RunRecords
from .signals import StopRequest

log = logging.getLogger("segformer")


@dataclass
class TrainResult:
    """What a run produced: its folder, the best periodic/final mIoU, the final evaluation and the log records."""

    out: Path
    best_miou: float | None
    final_metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trainer:
    """The parts of a run that stay put while it trains: model, optimiser, schedule, where it writes."""

    config: TrainConfig
    device: torch.device
    model: SegFormer
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    records: RunRecords
    val_ds: Dataset | None
    world: int = 1
    rank: int = 0
    criterion: Callable[[Tensor, Tensor], Tensor] = segmentation_loss  # (logits, labels) -> loss

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class TrainState:
    """What changes as the run advances; `iteration` and `best_miou` go into every checkpoint."""

    loss_sum: Tensor  # training loss summed since the last log line, on the device (no sync per step)
    nonfinite_at: Tensor  # the first iteration whose loss was not finite, -1 while none was
    iteration: int = 0  # iterations done
    best_miou: float | None = None
    last_saved: int | None = None  # iteration of the newest checkpoint on disk, None before the first
    window: int = 0  # iterations summed in loss_sum
    replace_last: bool = False  # resumed from previous.pt: the next save replaces the unreadable last.pt in place
    tick: float = field(default_factory=time.perf_counter)

    @classmethod
    def new(cls, device: torch.device) -> TrainState:
        return cls(torch.zeros((), device=device), torch.full((), -1, dtype=torch.long, device=device))

    def add_losses(self, losses: list[Tensor], it: int, grad_accum: int) -> None:
        for loss in losses:
            self.nonfinite_at = torch.where((self.nonfinite_at < 0) & ~torch.isfinite(loss), it, self.nonfinite_at)
            self.loss_sum += loss / grad_accum
        self.window += 1


def train(
    config: TrainConfig,
    *,
    model: SegFormer | None = None,
    train_dataset: SampleSource | None = None,
    val_dataset: SampleSource | None = None,
) -> TrainResult:
    """Train a SegFormer as `config` says; see the module docstring for the determinism contract.

    `model`, `train_dataset` and `val_dataset` replace what the config would build (in-memory data, custom
    models). A dataset is a `data.Dataset`, or anything with `len()`, `load(i) -> (uint8 HWC image, uint8 HW mask,
    name)` and `num_classes` or `class_names` attributes (`data.as_dataset`); its `transform`, when set, is used
    instead of a TrainTransform built from the config.
    """
    device = resolve_device(config.device)
    own_group = D.init_distributed(device)
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    failed = False
    try:
        return _train(config, device, model, train_dataset, val_dataset)
    except RuntimeError as e:
        failed = True
        if not (own_group and D.is_peer_failure(e)):
            raise
        # Another process died (its own error, printed by it, names the cause); say so instead of a socket error.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"process {D.rank()} of {D.world_size()} stopped: a collective failed, most likely because another "
            f"process of the group failed first (its own error names the cause): {first}"
        ) from None
    except BaseException:
        failed = True
        raise
    finally:
        torch.use_deterministic_algorithms(flags[0])  # leave the process as it was
        torch.backends.cudnn.benchmark = flags[1]
        if own_group:
            D.cleanup(failed)


def _train(
    config: TrainConfig,
    device: torch.device,
    model: SegFormer | None,
    train_source: SampleSource | None,
    val_source: SampleSource | None,
) -> TrainResult:
    _set_determinism(config.deterministic, device)
    resume_from = _resume_checkpoint(config)
    train_ds, val_ds = build_data(config, train_source, val_source)
    config = resolve_channels(complete_config(config, train_ds), train_ds)
    if D.is_main():
        warn_unseen_classes(train_ds)
    config, criterion = build_criterion(config, train_ds)
    transform = training_transform(config, train_ds)
    torch.manual_seed(config.seed)  # identical initialisation on every rank
    model = _prepare_model(config, model, train_ds, device, resume_from is None)
    run, state = _assemble(config, device, model, val_ds, resume_from)
    run.criterion = criterion
    config = run.config  # grad_accum fitted to the number of processes
    _log_start(run, len(train_ds))

    stream = SampleStream(train_ds, transform, config.seed, config.skip_bad_samples)
    plan = BatchPlan(state.iteration, config.iters, config.batch_size, config.grad_accum, run.world, run.rank)
    workers = config.num_workers if config.num_workers is not None else default_num_workers()
    loader = train_loader(stream, plan, workers, pin_memory=device.type == "cuda")
    try:
        _run_iterations(run, state, iter(loader))
        return _finish(run, state)
    finally:
        run.records.close()


def train_step(run: Trainer, micro_batches: Iterable[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """One optimiser step: forward, loss and backward over the grad-accum micro-batches, clip, step.

    Returns each micro-batch's loss (detached). Under DDP, gradients are all-reduced on the last micro-batch only.
    """
    config, device = run.config, run.device
    losses = []
    for a, (images, targets) in enumerate(micro_batches):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        sync = run.world == 1 or a == config.grad_accum - 1
        with run.net.no_sync() if not sync else contextlib.nullcontext():
            with autocast(device, config.amp):
                logits = run.net(images)
            loss = run.criterion(logits, targets)
            run.scaler.scale(loss / config.grad_accum).backward()
        losses.append(loss.detach())
    if config.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return losses


# ---------------------------------------------------------------------------------------------------- setup


def _set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _resume_checkpoint(config: TrainConfig) -> Path | None:
    """The run folder to continue from (None: start afresh); never overwrite a run without being asked to.

    With --resume, any checkpoint there. Without it, only under a torchrun restart (TORCHELASTIC_RESTART_COUNT > 0)
    of this same run: RUN_DIR/config.yaml must hold this run's settings, so the agent re-running the command line
    that started the run continues it instead of failing on every restart; anything else is refused.
    """
    run_dir = Path(config.out)
    found = find_resume_checkpoint(run_dir)
    if found is None:
        if config.resume and D.is_main():
            log.info("%s: no checkpoint to resume from; starting from scratch", run_dir)
        return None
    if config.resume:
        return run_dir
    restarts = D.restart_count()
    if restarts > 0:
        differs = _differs_from_run(run_dir, config)
        if not differs:
            if D.is_main():
                log.info("torchrun restart %d: continuing this run in %s (config.yaml matches)", restarts, run_dir)
            return run_dir
        hint = f"its config.yaml differs in {', '.join(differs)}; pass --resume to continue it or pick --out"
    else:
        hint = "pass --resume to continue it or pick --out"
    raise ValueError(f"{run_dir}: already holds a training checkpoint; {hint}")


# Fields that say how a run is executed, not what it computes: a restarted run may differ in them.
_EXECUTION_FIELDS = frozenset({"resume", "num_workers", "device", "tensorboard", "grad_accum"})


def _differs_from_run(run_dir: Path, config: TrainConfig) -> list[str]:
    """The settings in which `config` differs from RUN_DIR/config.yaml (["config.yaml"] when it is unreadable).
    Unset fields (None: filled in from the dataset) do not count."""
    try:
        saved = read_yaml(run_dir / "config.yaml")
    except (OSError, ValueError):
        return ["config.yaml"]
    ours = config.to_dict()
    return [k for k, v in ours.items() if k not in _EXECUTION_FIELDS and v is not None and saved.get(k, v) != v]


def _prepare_model(
    config: TrainConfig, model: SegFormer | None, dataset: Dataset, device: torch.device, fresh: bool = True
) -> SegFormer:
    """The given model (checked against the dataset) or a new one, on `device` in training mode, with the frozen
    encoder stages the config asks for."""
    num_classes, names = num_classes_of(dataset), class_names(dataset)
    if model is None:
        model = build_model(config, num_classes, names)
    elif model.config.num_classes != num_classes:
        raise ValueError(f"model has {model.config.num_classes} classes but the dataset has {num_classes}")
    elif model.config.in_channels != config.in_channels:
        raise ValueError(f"model takes {model.config.in_channels} channels but in_channels={config.in_channels}")
    elif model.config.class_names is None and names is not None:
        model.config = model.config.replace(class_names=names)  # saved with the model
    if model.config.mean is None and config.mean is not None:  # the channel statistics travel with the model
        model.config = model.config.replace(mean=config.mean, std=config.std)
    model.config = model.config.replace(test_protocol=protocol_for_run(config, dataset))  # predict runs it by default
    if not dataset.labels.is_default:  # saved with the model: eval/predict apply it
        model.config = model.config.replace(labels=dataset.labels.to_dict())
    model = model.to(device).train()
    if config.freeze_encoder or config.freeze_stages:
        stages = len(model.encoder.stages) if config.freeze_encoder else config.freeze_stages
        frozen = freeze_encoder_stages(model, stages)
        if D.is_main():
            log.info("froze %d of %d encoder stages (%d parameters)", stages, len(model.encoder.stages), frozen)
            if config.pretrained is None and fresh:
                log.warning("freezing an encoder that is not pretrained (no --pretrained): it stays random")
    if config.grad_checkpointing:
        model.encoder.set_grad_checkpointing(True)
    return model


def _compiled(net: nn.Module, device: torch.device, say: bool) -> nn.Module:
    """`torch.compile(net)` (checkpoints keep saving the plain model), or `net` with one line where it cannot."""
    reason = compile_unavailable(device)
    if reason is None:
        return torch.compile(net)  # type: ignore[return-value]
    if say:
        log.warning("torch.compile is not available here (%s); training eagerly", reason)
    return net


def _assemble(
    config: TrainConfig, device: torch.device, model: SegFormer, val_ds: Dataset | None, resume_from: Path | None
) -> tuple[Trainer, TrainState]:
    """Optimiser, schedule, grad scaler (restored from the run folder `resume_from`), the run's records; DDP with
    > 1 process; grad_accum fitted so that the global batch is what the run asked for."""
    world, rank = D.world_size(), D.rank()
    saved, path = None, None
    if resume_from is not None:
        path, saved = load_resume_checkpoint(resume_from, warn=rank == 0)
    config = _fit_global_batch(config, world, path, saved)
    net: nn.Module = model
    if world > 1:
        model = D.convert_batchnorm(model, device)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = _compiled(net, device, rank == 0)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.head_lr_mult)
    scheduler = build_scheduler(
        optimizer, config.iters, config.warmup_iters, config.warmup_ratio, config.power, config.min_lr
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    torch.manual_seed(config.seed * 1000 + rank)  # DropPath/dropout differ across ranks
    state = TrainState.new(device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state.iteration = state.last_saved = int(saved["iteration"])
        state.best_miou = saved.get("best_miou")
        state.replace_last = path.name != CHECKPOINT_NAME  # last.pt was unreadable: never rotate it to previous.pt
        _restore_rng(path, saved["rng"].get("states", []), device, world, rank)
        if rank == 0:
            log.info("resumed from %s at iteration %d", path, state.iteration)
    records = _open_records(config, rank == 0, state.iteration if saved is not None else None)
    run = Trainer(config, device, model, net, optimizer, scheduler, scaler, records, val_ds, world, rank)
    return run, state


def _fit_global_batch(config: TrainConfig, world: int, path: Path | None, saved: dict[str, Any] | None) -> TrainConfig:
    """`config` with grad_accum set so that batch_size x processes x grad_accum is the global batch the run asked
    for: --global-batch, else the resumed checkpoint's, else this run's own product. Logged when it changes."""
    asked = config.global_batch
    if saved is not None:
        trained = saved.get("global_batch") or global_batch(saved["train_config"], len(saved["rng"]["states"]))
        check_compatible(path, saved["train_config"], config, int(trained), int(asked or trained))
        asked = int(trained)
    target = asked or config.batch_size * world * config.grad_accum
    per_step = config.batch_size * world
    if target % world:
        raise ValueError(f"the global batch of {target} cannot be split over {world} processes")
    if target % per_step:
        raise ValueError(
            f"the global batch of {target} cannot be made of {world} process(es) x batch {config.batch_size} x a "
            f"whole number of accumulation steps; pick a --batch-size that divides {target // world}"
        )
    accum = target // per_step
    if accum != config.grad_accum and D.is_main():
        log.info(
            "%d process(es) of batch %d: gradient accumulation %d -> %d keeps the global batch of %d",
            world,
            config.batch_size,
            config.grad_accum,
            accum,
            target,
        )
    return config.replace(grad_accum=accum)


def _restore_rng(path: Path, states: list[dict[str, Any]], device: torch.device, world: int, rank: int) -> None:
    if len(states) == world:
        set_rng_state(states[rank], device)
    elif rank == 0:
        log.warning("%s was written by %d processes, now %d: RNG streams restart", path, len(states), world)


def _open_records(config: TrainConfig, main: bool, resumed_at: int | None) -> RunRecords:
    run_dir = Path(config.out)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in run_dir.glob(".*.tmp"):  # a write cut short by a kill (atomic_write/atomic_folder temps)
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        config.save_yaml(run_dir / "config.yaml")
    return RunRecords(run_dir, write=main, resumed_at=resumed_at, tensorboard=config.tensorboard)


def _log_start(run: Trainer, images: int) -> None:
    if not run.main:
        return
    c = run.config
    log.info(
        "training %s on %s (%d images, %d classes) for %d iterations: global batch %d (%d x %d processes x %d "
        "accumulation), device %s, run folder %s",
        c.model,
        c.dataset,
        images,
        c.num_classes,
        c.iters,
        c.batch_size * run.world * c.grad_accum,
        c.batch_size,
        run.world,
        c.grad_accum,
        run.device,
        run.run_dir,
    )
    if c.warmup_iters >= c.iters:
        log.warning(
            "warmup_iters=%d is not shorter than the run (iters=%d): the learning rate never reaches lr=%g; "
            "for short runs pass --schedule short (no warmup) or a smaller --warmup-iters",
            c.warmup_iters,
            c.iters,
            c.lr,
        )


# ----------------------------------------------------------------------------------------------------- loop


def _run_iterations(run: Trainer, state: TrainState, batches: Iterator) -> None:
    """Steps from `state.iteration` to `config.iters`, logging, evaluating and saving as the config says."""
    from tqdm import tqdm

    config = run.config
    bar = tqdm(
        total=config.iters, initial=state.iteration, disable=not run.main, desc="train", dynamic_ncols=True, unit="it"
    )
    stop = StopRequest(install=run.world == 1)
    state.tick = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # fp16: the grad scaler skips steps whose gradients overflowed; the schedule still advances (as mmcv).
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            for it in range(state.iteration, config.iters):
                losses = train_step(run, (next_batch(batches) for _ in range(config.grad_accum)))
                state.add_losses(losses, it, config.grad_accum)
                lr = run.optimizer.param_groups[0]["lr"]
                run.scheduler.step()
                state.iteration = it + 1
                bar.update(1)
                _after_step(run, state, lr, bar, stop)
    finally:
        bar.close()  # before any error message, not after it
        stop.uninstall()


def _after_step(run: Trainer, state: TrainState, lr: float, bar: Any, stop: StopRequest) -> None:
    """Log, evaluate, save and stop (on a signal) at the iterations the config asks for."""
    config, done = run.config, state.iteration
    last = done == config.iters
    if done % config.log_every == 0 or last:
        _log_progress(run, state, lr, bar)
    if config.eval_every and done % config.eval_every == 0 and not last:
        _check_finite(run, state)
        _validate(run, state)
    if (config.save_every and done % config.save_every == 0) or last:
        _check_finite(run, state)
        _save(run, state)
    if stop.signal is not None:
        _check_finite(run, state)
        if state.last_saved != done:
            _save(run, state)
        raise RuntimeError(
            f"stopped by {stop.name} after iteration {done}: saved {run.run_dir / CHECKPOINT_NAME}; "
            "continue with --resume"
        )


def _log_progress(run: Trainer, state: TrainState, lr: float, bar: Any) -> None:
    """One metrics.jsonl line: mean loss (over processes too) and s/iteration since the previous line."""
    _check_finite(run, state)
    if run.world > 1:
        torch.distributed.all_reduce(state.loss_sum)
        state.loss_sum /= run.world
    now = time.perf_counter()
    loss = float(state.loss_sum) / state.window
    record = {"iter": state.iteration, "loss": loss, "lr": lr, "sec_per_iter": (now - state.tick) / state.window}
    state.loss_sum.zero_()
    state.window, state.tick = 0, now
    run.records.add(record, {"train/loss": loss, "train/lr": lr})
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)


def _check_finite(run: Trainer, state: TrainState) -> None:
    """Stop (without saving) once any process met a non-finite loss; the last good checkpoint stays as it was."""
    bad = state.nonfinite_at.clone()
    if run.world > 1:  # the earliest over processes: NaN weights make the others' later losses non-finite too
        never = torch.iinfo(bad.dtype).max
        bad = torch.where(bad < 0, never, bad)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
        bad = torch.where(bad == never, -1, bad)
    if int(bad) >= 0:
        checkpoint = run.run_dir / CHECKPOINT_NAME
        kept = f"the last good checkpoint {checkpoint} (iteration {state.last_saved}) is intact"
        raise RuntimeError(
            f"non-finite loss at iteration {int(bad) + 1}: stopped without saving; "
            + (kept if state.last_saved is not None else "no checkpoint was written")
            + "; lower --lr, add --clip-grad, or use --amp bf16/none instead of fp16"
        )


def _snapshot(run: Trainer, state: TrainState) -> dict[str, Any]:
    """The checkpoint dict; gathering the RNG states is collective, so every process calls this."""
    rngs = D.gather_objects(rng_state(run.device))
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "iteration": state.iteration,
        "best_miou": state.best_miou,
        "rng": {"states": rngs},
        "global_batch": run.config.batch_size * run.world * run.config.grad_accum,
        "config": run.model.config.to_dict(),
        "train_config": run.config.to_dict(),
    }


def _save(run: Trainer, state: TrainState, keep_previous: bool = True) -> None:
    snapshot = _snapshot(run, state)
    if run.main:
        save_checkpoint(run.run_dir, snapshot, keep_previous=keep_previous and not state.replace_last)
    state.last_saved = state.iteration
    state.replace_last = False


def _validate(run: Trainer, state: TrainState) -> dict[str, Any] | None:
    """Evaluate on the val set (None without one), log it, keep best/ by mIoU."""
    if run.val_ds is None:
        return None
    metrics = _evaluate(run.model, run.val_ds, run.config, run.device)
    run.model.train()
    if run.main:
        record = {"iter": state.iteration, **{k: v for k, v in metrics.items() if k != "per_class"}}
        run.records.add(record, {f"val/{k}": metrics[k] for k in ("mIoU", "aAcc", "mAcc", "mDice") if k in metrics})
        log.info("iteration %d: mIoU %.4f aAcc %.4f", state.iteration, metrics["mIoU"], metrics.get("aAcc", math.nan))
        if state.best_miou is None or metrics["mIoU"] > state.best_miou:
            state.best_miou = float(metrics["mIoU"])
            run.model.save_pretrained(run.run_dir / "best", card=training_card(run.config, state.iteration, metrics))
    state.best_miou = D.broadcast_object(state.best_miou)
    return metrics


def _evaluate(model: SegFormer, dataset: Dataset, config: TrainConfig, device: torch.device) -> dict[str, Any]:
    from ..evaluation.evaluate import evaluate

    info = dataset.info
    scale = config.scale or (tuple(info.scale) if info is not None else None)
    options = dataset.tiled_protocol(config.crop) or InferenceOptions(scale=scale)  # rasters: tiles of the crop
    model.eval()
    with torch.no_grad():
        return evaluate(
            model,
            dataset,
            options,
            device=device,
            progress=False,
            max_samples=config.eval_max_samples,
        )


def _finish(run: Trainer, state: TrainState) -> TrainResult:
    """Final evaluation, last.pt, final/ (and its metrics.json), curves.png; every process returns the result."""
    if run.world > 1:
        D.check_replicas_agree(run.model)
    final_metrics = _validate(run, state)
    result = TrainResult(run.run_dir, state.best_miou, final_metrics, run.records.history)
    if final_metrics is not None:  # best_miou may have changed: keep last.pt's copy current
        _save(run, state, keep_previous=False)
    if run.main:
        run.model.save_pretrained(run.run_dir / "final", card=training_card(run.config, state.iteration, final_metrics))
        if final_metrics is not None:
            write_json(run.run_dir / "final" / "metrics.json", final_metrics)
        plot_curves(run.records.history, run.run_dir / "curves.png")
        best = f", best mIoU {state.best_miou:.4f}" if state.best_miou else ""
        log.info("done: %s (final/ and last.pt)%s", run.run_dir, best)
    D.barrier()
    return result
