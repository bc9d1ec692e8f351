"""Training that survives: torchrun elastic restarts (SIGKILL, 5 in a row, bitwise equal to an uninterrupted run), a
job that shrinks from 2 nodes to 1, a failing rank stopping everyone quickly, a full disk, a corrupt checkpoint.

The multi-process tests run torchrun with 2 gloo processes on CPU and tiny models; they are `slow`. The two that kill
workers or a node at moments read from the run's progress (restart, shrink) are also `elastic`: timing-sensitive on a
loaded machine, `make test` runs them, `make test-fast` does not."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segformer
from conftest import tiny_model_file
from segformer import fileio
from segformer.cli import main
from segformer.training import TrainConfig
from segformer.training import checkpoint as checkpoint_module
from segformer.training import distributed as D
from segformer.training import loop as loop_module
from test_train import make_folder, tiny_args, tiny_segformer

WORKER = Path(__file__).with_name("worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _last_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def _no_temporaries(run: Path) -> None:
    assert not [p.name for p in run.rglob(".*.tmp*")], "a write cut short left its temporary behind"


# ------------------------------------------------------------------------------------------- corrupt checkpoint


def test_truncated_last_falls_back_to_previous_and_both_broken_is_one_line(tmp_path, capsys, caplog):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    assert main(tiny_args(data, run, model, "--iters", "3", "--save-every", "1")) == 0
    good = torch.load(run / "previous.pt", weights_only=True)
    assert good["iteration"] == 2
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:5000])  # a copy or a disk that cut it short

    with caplog.at_level("INFO", logger="segformer"):
        assert main(tiny_args(data, run, model, "--iters", "5", "--save-every", "1", "--resume")) == 0
    warning = next(r.getMessage() for r in caplog.records if "falling back" in r.getMessage())
    assert str(run / "last.pt") in warning and str(run / "previous.pt") in warning and "truncated" in warning
    assert "resumed from" in caplog.text and "previous.pt at iteration 2" in caplog.text
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 5
    # The unreadable last.pt was replaced in place, never rotated into previous.pt: that is now iteration 4.
    assert torch.load(run / "previous.pt", weights_only=True)["iteration"] == 4

    for name in ("last.pt", "previous.pt"):
        (run / name).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(tiny_args(data, run, model, "--iters", "6", "--resume")) == 2
    err = _last_line(capsys)
    assert err.startswith("segformer train: error: cannot resume"), err
    assert "last.pt" in err and "previous.pt" in err and "\n" not in err


# ------------------------------------------------------------------------------------------------- full disk


def _fake_full_disk(monkeypatch) -> None:
    """The disk reports no free space (what the writers below meet after their failed write)."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda _: usage(1 << 30, 1 << 30, 0))


def test_full_disk_while_saving_a_checkpoint_keeps_the_last_one_and_says_so(tmp_path, capsys, monkeypatch):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    real_save, calls = checkpoint_module._save_synced, []

    def fills_the_disk(obj, name):
        calls.append(name)
        if len(calls) == 1:
            return real_save(obj, name)
        _fake_full_disk(monkeypatch)
        Path(name).write_bytes(b"PK\x03\x04" + bytes(1000))  # part of a zip, then torch's zip writer gives up:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 27390208 vs 27390096")

    monkeypatch.setattr(checkpoint_module, "_save_synced", fills_the_disk)
    assert main(tiny_args(data, run, model, "--iters", "6", "--save-every", "2")) == 2
    err = _last_line(capsys)
    assert "no space left" in err and str(run / "last.pt") in err and "intact" in err, err
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2  # the previous checkpoint, whole
    assert not (run / "final").exists()
    _no_temporaries(run)

    monkeypatch.undo()  # space was freed: --resume continues from the intact checkpoint
    assert main(tiny_args(data, run, model, "--iters", "6", "--save-every", "2", "--resume")) == 0
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 6


def test_full_disk_while_saving_the_model_keeps_the_previous_folder(tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    data = make_folder(tmp_path / "data", n_train=4, n_val=2)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    real_save, calls, digests = safetensors.torch.save_file, [], {}

    def fills_the_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:  # best/ at the first evaluation
            return real_save(tensors, filename, metadata=metadata)
        digests.update({p.name: _digest(p) for p in (run / "best").iterdir()})
        _fake_full_disk(monkeypatch)
        Path(filename).write_bytes(b"\x00" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    # The second model save (best/ again, or final/) meets the full disk.
    args = tiny_args(data, run, model, "--iters", "4", "--eval-every", "2", "--save-every", "2")
    assert main(args) == 2
    err = _last_line(capsys)
    assert "no space left" in err and "model.safetensors" in err, err
    assert digests and {p.name: _digest(p) for p in (run / "best").iterdir()} == digests  # best/ untouched
    assert segformer.load_model(run / "best").config.num_classes == 3
    assert not (run / "final").exists()
    _no_temporaries(run)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_pretrained_swaps_the_whole_folder_and_keeps_other_files(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    first = tiny_segformer()
    first.save_pretrained(folder)
    (folder / "notes.txt").write_text("mine")
    before = {p.name: _digest(p) for p in folder.iterdir()}

    def broken(p):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):  # any failure: the folder is as it was
        fileio.atomic_folder(folder, {"model.safetensors": lambda p: p.write_bytes(b"x"), "config.json": broken})
    assert {p.name: _digest(p) for p in folder.iterdir()} == before

    torch.manual_seed(1)
    second = tiny_segformer()
    second.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"  # what the folder held besides the model stays
    loaded = segformer.load_model(folder)
    assert torch.equal(loaded.state_dict()["head.classifier.weight"], second.state_dict()["head.classifier.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left beside it


def test_full_disk_is_recognised_in_each_writers_words(tmp_path, monkeypatch):
    assert fileio.disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert fileio.disk_full(RuntimeError("Error while serializing: I/O error: (os error 28)"), tmp_path)
    assert not fileio.disk_full(RuntimeError("unexpected pos 704 vs 598"), tmp_path)  # plenty of space here
    _fake_full_disk(monkeypatch)
    assert fileio.disk_full(RuntimeError("unexpected pos 704 vs 598"), tmp_path)


# ----------------------------------------------------------------------------------------- restarts, batches


def test_a_torchrun_restart_continues_the_same_run_without_resume(tmp_path, monkeypatch, caplog):
    data = make_folder(tmp_path / "data", n_train=4, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    assert main(tiny_args(data, run, model, "--iters", "2", "--save-every", "1")) == 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the agent re-runs the same command line
    with caplog.at_level("INFO", logger="segformer"):
        assert main(tiny_args(data, run, model, "--iters", "2", "--save-every", "1")) == 0
    assert "torchrun restart 1: continuing this run" in caplog.text
    assert "resumed from" in caplog.text and "at iteration 2" in caplog.text
    same = TrainConfig.from_dict(_config_yaml(run))
    with pytest.raises(ValueError, match="config.yaml differs in lr"):  # another run's folder: refused
        loop_module._resume_checkpoint(same.replace(lr=0.5))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a new launch never continues a run unasked
    with pytest.raises(ValueError, match="--resume"):
        loop_module._resume_checkpoint(same)


def _config_yaml(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


def test_gradient_accumulation_keeps_the_global_batch_when_the_world_changes(caplog):
    config = TrainConfig(dataset="memory", batch_size=2, grad_accum=1)
    saved = {"global_batch": 4, "train_config": config.to_dict(), "rng": {"states": [{}, {}]}}
    with caplog.at_level("INFO", logger="segformer"):
        fitted = loop_module._fit_global_batch(config, 1, Path("last.pt"), saved)  # 2 processes -> 1
    assert fitted.grad_accum == 2 and "gradient accumulation 1 -> 2 keeps the global batch of 4" in caplog.text
    assert loop_module._fit_global_batch(fitted, 2, Path("last.pt"), saved).grad_accum == 1  # and back
    old = {"train_config": config.to_dict(), "rng": {"states": [{}, {}]}}  # no global_batch: batch x accum x procs
    assert loop_module._fit_global_batch(config, 1, Path("last.pt"), old).grad_accum == 2
    assert loop_module._fit_global_batch(config.replace(global_batch=8), 2, None, None).grad_accum == 2
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        loop_module._fit_global_batch(config, 3, Path("last.pt"), saved)
    with pytest.raises(ValueError, match="global batch of 4 but this run asks for 8"):
        loop_module._fit_global_batch(config.replace(global_batch=8), 1, Path("last.pt"), saved)


def test_group_start_up_is_bounded_and_says_what_did_not_come_up(monkeypatch):
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv(D.INIT_TIMEOUT_ENV, "2")
    store.set(D.ATTEMPT_KEY, "an-earlier-attempt")  # what a previous attempt left in the agent's store
    store.set("segformer/an-earlier-attempt/members", json.dumps(["its-rank-1"]))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"process group did not come up: rank 1 of 2 .* at most 2 s"):
        D.init_distributed(torch.device("cpu"))  # rank 0 of this attempt never shows up
    assert time.monotonic() - start < 10
    assert not torch.distributed.is_initialized()


# ------------------------------------------------------------------------------------- multi-process helpers


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", D.INIT_TIMEOUT_ENV: "60", **extra}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _workers(agent: int) -> dict[int, int]:
    """{pid: RANK} of the worker processes a torchrun agent runs now."""
    found = {}
    for pid in _children(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[pid] = int(ranks[0])
    return found


def _iteration(run: Path) -> int:
    try:
        return int(torch.load(run / "last.pt", weights_only=True)["iteration"])
    except Exception:  # absent, or replaced while read
        return -1


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the job ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ elastic restarts


def _logged(run: Path) -> int:
    """The run's last logged iteration (-1 before any): rank 0 logs each iteration before saving it. Cheap, so the
    kills follow the run closely (reading last.pt takes longer than a tiny iteration on a loaded machine)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            return int(json.loads(line)["iter"])
        except (ValueError, KeyError):  # a line being written
            continue
    return -1


KILLS, ITERS, MOST_STEPS_PER_ATTEMPT = 5, 60, 3


def _kill_a_worker_at_a_random_point(job: subprocess.Popen, run: Path, step: float, rng: random.Random,
                                     killed: set[int]) -> tuple[int, int, int]:  # fmt: skip
    """Wait for the attempt's workers, then SIGKILL one of them once it trained 0 to MOST_STEPS_PER_ATTEMPT
    iterations (0: in start-up, resuming or group init), somewhere in the next iteration (forward, backward,
    all-reduce or the checkpoint write). Returns (pid, rank, last logged iteration at the kill).

    At most MOST_STEPS_PER_ATTEMPT + a few iterations per attempt, so ITERS guarantees that every kill comes before
    the run ends, however slow the machine: progress is observed, not timed."""
    _wait(lambda: len(_workers(job.pid)) == 2 and not set(_workers(job.pid)) & killed, 180, "the workers", job)
    resumed_at, steps = _logged(run), rng.randint(0, MOST_STEPS_PER_ATTEMPT)
    if steps:
        _wait(lambda: _logged(run) >= resumed_at + steps, 180, "progress", job, poll=0.01)
        time.sleep(rng.uniform(0, step))
    else:  # a random moment of the start-up (python, torch, data, resume, group), unless a step came first
        pause = time.monotonic() + rng.uniform(0, 4)
        _wait(lambda: time.monotonic() > pause or _logged(run) > resumed_at, 60, "a moment", job, poll=0.01)
    pid, rank = rng.choice(sorted(_workers(job.pid).items()))
    os.kill(pid, signal.SIGKILL)
    return pid, rank, _logged(run)


@pytest.mark.slow
@pytest.mark.elastic
def test_elastic_restarts_after_five_sigkills_end_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    data = make_folder(tmp_path / "data", n_train=8, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json", dropout=0.1)  # DropPath + dropout: every rank's RNG matters
    common = ("--iters", str(ITERS), "--save-every", "1", "--log-every", "1", "--deterministic", "--seed", "5",
              "--resume")  # fmt: skip
    launch = [*TORCHRUN, "--standalone", "--nproc-per-node", "2"]
    ref = tmp_path / "ref"
    proc = subprocess.run(
        [*launch, "-m", "segformer", *tiny_args(data, ref, model, *common)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = float(np.median(_seconds_per_iteration(ref)))

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"kill points drawn with random.Random({seed})")  # shown when the test fails
    run = tmp_path / "run"
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(
        [*launch, "--max-restarts", str(KILLS), "-m", "segformer", *tiny_args(data, run, model, *common)],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    kills = []
    try:
        for _ in range(KILLS):
            kills.append(_kill_a_worker_at_a_random_point(job, run, step, rng, {k[0] for k in kills}))
        assert job.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    text = (tmp_path / "job.log").read_text()
    what = f"seed {seed}, kills (pid, rank, iteration) {kills}"
    assert len(kills) == KILLS and kills[-1][2] < ITERS, f"the run ended before the last kill ({what})"
    assert "process group did not come up" not in text, text[-3000:]
    want = torch.load(ref / "last.pt", weights_only=True)
    got = torch.load(run / "last.pt", weights_only=True)
    assert got["iteration"] == want["iteration"] == ITERS
    for key, value in want["model"].items():
        assert torch.equal(value, got["model"][key]), f"{key} ({what})"
    assert _losses(run) == _losses(ref)  # every attempt's log was cut back to its checkpoint


def _seconds_per_iteration(run: Path) -> list[float]:
    lines = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["sec_per_iter"] for r in lines if "sec_per_iter" in r]


# --------------------------------------------------------------------------------------------- a job shrinks


def _processes(run: Path) -> int:
    """How many processes wrote the run's newest checkpoint (0 while there is none)."""
    try:
        return len(torch.load(run / "last.pt", weights_only=True)["rng"]["states"])
    except Exception:  # absent, or replaced while read
        return 0


@pytest.mark.slow
@pytest.mark.elastic
def test_a_two_node_job_that_loses_a_node_finishes_on_one_with_the_same_global_batch(tmp_path):
    data = make_folder(tmp_path / "data", n_train=8, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    port = _free_port()
    args = tiny_args(data, run, model, "--iters", "60", "--save-every", "1", "--log-every", "1", "--resume",
                     "--global-batch", "4", "--batch-size", "2")  # fmt: skip

    def agent(name: str, host: bool) -> tuple[subprocess.Popen, Path]:
        conf = f"is_host={str(host).lower()},last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=3"
        cmd = [*TORCHRUN, "--nnodes", "1:2", "--nproc-per-node", "1", "--max-restarts", "3",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "shrink",
               "--rdzv-conf", conf, "-m", "segformer", *args]  # fmt: skip
        path = tmp_path / f"{name}.log"
        # The README's command for jobs that change size: with torch's job-wide store (the default) a node that
        # joins a running job waits for an address nobody publishes, and both agents fail after 60 s.
        env = _env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
        with path.open("w") as out:
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True), path

    # Both nodes start together; b connects to a's rendezvous store as soon as it is up. If b comes later than a's
    # last call (a loaded machine), a starts alone and b joins it: the job grows to 2 first, which must work too.
    a, a_log = agent("a", host=True)  # hosts the rendezvous store; b is the node that goes away
    b, b_log = agent("b", host=False)
    try:
        _wait(lambda: _processes(run) == 2, 180, "a checkpoint of the 2-node group", a)
        for pid in [b.pid, *_workers(b.pid)]:  # the machine goes away: its agent and its worker (own session)
            os.kill(pid, signal.SIGKILL)
        killed_at = _iteration(run)
        assert a.wait(timeout=240) == 0, a_log.read_text()[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                for pid in [*_workers(p.pid), p.pid]:
                    os.kill(pid, signal.SIGKILL)
    text = a_log.read_text()  # the survivor's log; the 2-node group's rank 0 may have been b's process
    assert "global batch 4 (2 x 2 processes x 1 accumulation)" in text + b_log.read_text(), text[-3000:]
    assert "gradient accumulation 1 -> 2 keeps the global batch of 4" in text, text[-3000:]
    assert "global batch 4 (2 x 1 processes x 2 accumulation)" in text
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 60 and state["global_batch"] == 4 and 0 < killed_at < 60
    assert len(state["rng"]["states"]) == 1  # the last steps ran as one process
    assert all(np.isfinite(_losses(run)))


# ------------------------------------------------------------------------------------- a failing rank stops all


def _corrupt(path: Path) -> None:
    Image.fromarray(np.full((72, 80), 7, np.uint8)).save(path)  # class 7 of 3: refused when read


def _two_processes(tmp_path: Path, args: list[str], patch: str = "") -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc-per-node", "2", str(WORKER), *args],
        env=_env(SEGFORMER_TEST_PATCH=patch),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr, time.monotonic() - start


@pytest.mark.slow
def test_a_bad_sample_on_rank_1_stops_the_job_naming_the_file(tmp_path):
    data = make_folder(tmp_path / "data", n_train=8, n_val=0)
    # Iteration 0 of 2 processes x batch 2: rank 0 reads stream positions 0-1, rank 1 positions 2-3.
    first_of_rank_1 = int(np.random.default_rng([0, 0]).permutation(8)[2])
    bad = sorted((data / "masks" / "train").iterdir())[first_of_rank_1]
    _corrupt(bad)
    run = tmp_path / "run"
    code, err, seconds = _two_processes(tmp_path, tiny_args(data, run, tiny_model_file(tmp_path / "m.json"),
                                                            "--iters", "4", "--save-every", "1"))  # fmt: skip
    assert code != 0 and seconds < 60, err[-3000:]
    assert str(bad) in err and "--skip-bad-samples" in err, err[-3000:]
    assert not (run / "last.pt").exists()  # it failed in the first iteration: nothing to save yet
    _no_temporaries(run)


@pytest.mark.slow
def test_an_error_in_the_periodic_evaluation_stops_the_job_and_keeps_the_checkpoint(tmp_path):
    data = make_folder(tmp_path / "data", n_train=4, n_val=2)
    bad = data / "masks" / "val" / "001.png"  # evaluation shards samples rank, rank + world: rank 1 reads this one
    _corrupt(bad)
    run = tmp_path / "run"
    args = tiny_args(data, run, tiny_model_file(tmp_path / "m.json"), "--iters", "6", "--eval-every", "3",
                     "--save-every", "1")  # fmt: skip
    code, err, seconds = _two_processes(tmp_path, args)
    assert code != 0 and seconds < 60, err[-3000:]
    assert str(bad) in err, err[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2  # iteration 3 evaluates before saving
    assert not (run / "best").exists()
    _no_temporaries(run)


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_rank_stops_every_rank_naming_the_iteration(tmp_path):
    data = make_folder(tmp_path / "data", n_train=8, n_val=0)
    run = tmp_path / "run"
    args = tiny_args(data, run, tiny_model_file(tmp_path / "m.json"), "--iters", "8", "--save-every", "2",
                     "--log-every", "2")  # fmt: skip
    code, err, seconds = _two_processes(tmp_path, args, patch="nan:1:3")  # rank 1 only, from iteration 3
    assert code != 0 and seconds < 60, err[-3000:]
    assert "non-finite loss at iteration 3" in err, err[-3000:]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    _no_temporaries(run)
