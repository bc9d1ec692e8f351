"""torch.distributed plumbing for `torchrun`: group start-up that survives elastic restarts, rank helpers, and a
batch norm that syncs.

Nothing is monkeypatched: code that writes files or prints asks `is_main()`.

Why a restarted group could hang, and what `init_distributed` does about it. Since torch 2.4 torchrun's agent hosts
one TCPStore for the whole job (`TORCHELASTIC_USE_AGENT_STORE=True`, MASTER_ADDR/MASTER_PORT point at it) and keeps
it across restarts. `init_process_group(init_method="env://")` connects every worker to that store under the same
key prefix in every attempt, so the restarted workers find the previous attempt's keys still there: gloo reads a
peer's address from the store, gets the dead peer's old address and connects to it. Depending on what is at that
address, that fails at once (and burns a restart), or hangs until the process-group timeout (30 minutes): e.g. a
listening socket that a not yet reaped process of the old group still holds accepts the connection and never answers.
Whether the new peer overwrote its key before it was read is a race, so a restart works on one try and hangs on the
next (pytorch/pytorch#135712). `TORCHELASTIC_RESTART_COUNT` is no fix: each agent counts its own restarts, so nodes
can disagree (a node that joins later starts at 0).

So under an agent store every attempt first agrees on a fresh namespace (`_attempt_namespace`): rank 0 publishes a
new random attempt id, every other rank acknowledges it with an id of its own process, and rank 0 answers with the
list of the ids it counted. A rank that read a stale attempt id sees a list without its own id and reads again. The
process group is then built on `PrefixStore(namespace, agent store)`, where no key of an earlier attempt exists.
All of it, and the group's own connection, is bounded by a short timeout (`init_timeout`, default 120 s) whose
error says what did not come up, so the agent restarts the group instead of waiting 30 minutes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..runtime import rank_world

# Collectives after start-up: an evaluation or a checkpoint write on rank 0 may keep the others waiting this long.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
INIT_TIMEOUT_ENV = "SEGFORMER_DIST_INIT_TIMEOUT"  # seconds the group may take to come up (default 120)
ATTEMPT_KEY = "segformer/attempt"


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) set WORLD_SIZE/RANK for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun restarted this worker group (0 on the first attempt and outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def init_timeout() -> timedelta:
    """How long the process group may take to come up: ${INIT_TIMEOUT_ENV} seconds, default 120."""
    text = os.environ.get(INIT_TIMEOUT_ENV, "120")
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{INIT_TIMEOUT_ENV}={text!r} must be a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{INIT_TIMEOUT_ENV}={text!r} must be > 0")
    return timedelta(seconds=seconds)


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment (NCCL on CUDA, gloo on CPU).

    Returns True when this call initialised it (the caller then tears it down with `cleanup`). Start-up is bounded
    by `init_timeout()`; past it, a RuntimeError says which rank waited for what (see the module docstring).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = init_timeout()
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    start = time.monotonic()
    try:
        options: dict[str, Any] = {"timeout": timeout}
        if device.type == "cuda":
            options["device_id"] = device  # connect now, inside the bound, not at the first collective
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            agent = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
            )
            namespace = _attempt_namespace(agent, rank, world, start + timeout.total_seconds())
            store = dist.PrefixStore(f"segformer/{namespace}/", agent)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, **options)
        else:  # rank 0 hosts a new store for every launch: nothing stale to find
            dist.init_process_group(backend, init_method="env://", **options)
    except (RuntimeError, TimeoutError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"process group did not come up: rank {rank} of {world} (store {where}) gave up after "
            f"{time.monotonic() - start:.0f} s of at most {timeout.total_seconds():.0f} s ({INIT_TIMEOUT_ENV}): {first}"
        ) from None
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is not None:
        set_timeout(COLLECTIVE_TIMEOUT)
    return True


def _attempt_namespace(store: Any, rank: int, world: int, deadline: float) -> str:
    """An id that exactly the processes of this attempt agree on (module docstring): rank 0 makes it up, every
    other rank acknowledges it with its own process id, and rank 0 confirms the ids it counted."""
    me = uuid.uuid4().hex

    def left() -> timedelta:
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            raise TimeoutError(f"rank {rank}: the other processes of this attempt did not check in")
        return timedelta(seconds=seconds)

    if rank == 0:
        attempt = uuid.uuid4().hex
        store.set(ATTEMPT_KEY, attempt)
        acks = [f"segformer/{attempt}/ack/{r}" for r in range(1, world)]
        store.wait(acks, left())
        members = [store.get(key).decode() for key in acks]
        store.set(f"segformer/{attempt}/members", json.dumps(members))
        return attempt
    while True:
        store.wait([ATTEMPT_KEY], left())
        attempt = store.get(ATTEMPT_KEY).decode()
        store.set(f"segformer/{attempt}/ack/{rank}", me)
        members_key = f"segformer/{attempt}/members"
        while True:
            try:
                store.wait([members_key], min(left(), timedelta(seconds=0.5)))
            except dist.DistError:  # not confirmed yet: still the newest attempt?
                if store.get(ATTEMPT_KEY).decode() != attempt:
                    break
                continue
            members = json.loads(store.get(members_key))
            if rank - 1 < len(members) and members[rank - 1] == me:
                return attempt
            time.sleep(0.05)  # an earlier attempt's confirmation: wait for this attempt's rank 0 to publish
            break


# What a collective raises when another process of the group died (gloo raises plain RuntimeErrors).
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport", "NCCL")


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` came out of a collective because another process of the group failed or went away."""
    if isinstance(error, dist.DistError) and not isinstance(error, dist.DistStoreError):
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _PEER_GONE)


def cleanup(failed: bool = False) -> None:
    """Tear the group down. After a failure it is aborted instead: destroying a group whose peer died can block
    (NCCL waits for the peer), and the process is about to exit anyway."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if failed and abort is not None and dist.get_backend() != "gloo":
        abort()
    else:
        dist.destroy_process_group()


def world_size() -> int:
    return rank_world()[1]


def rank() -> int:
    return rank_world()[0]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Only rank 0 writes files, logs and shows progress."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank (used for decisions such as 'stop now')."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients too (every rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x)


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch, on any device.

    `nn.SyncBatchNorm` only runs on GPUs; this is the CPU (gloo) stand-in, used when world size > 1 on CPU.
    Statistics are two-pass (mean, then centred variance) through differentiable all-reduces, so gradients flow
    across processes exactly as for one process holding the whole batch. Same parameter and buffer names as
    BatchNorm2d, so state dicts are interchangeable.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = (0, 2, 3)
        count = all_reduce_sum(torch.tensor([float(x.numel() // x.shape[1])], device=x.device))
        mean = all_reduce_sum(x.sum(dims)) / count  # (C,)
        centred = x - mean[None, :, None, None]  # (B, C, H, W)
        var = all_reduce_sum((centred * centred).sum(dims)) / count  # biased: what BN normalises with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Batch norms that sync across processes: nn.SyncBatchNorm on GPUs, `CrossProcessBatchNorm2d` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            new.load_state_dict(child.state_dict())
            new.to(child.weight.device if child.affine else device)
            setattr(model, name, new)
        else:
            convert_batchnorm(child, device)
    return model


def check_replicas_agree(model: nn.Module) -> None:
    """DDP keeps replicas bitwise identical; compare digests once at the end so a silent divergence cannot pass."""
    import hashlib

    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digests = gather_objects(digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} processes ended with different weights (digests {digests})")
