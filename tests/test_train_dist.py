"""DDP on CPU: `torchrun --nproc-per-node 2 -m segformer train` (gloo) against one process with the same global
batch, with AdamW (the recipe) and with plain SGD. The loop itself checks that the two replicas end bitwise identical
(it fails the run otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model_file
from segformer.cli import main
from segformer.training import loop as loop_module
from test_train import make_folder, tiny_args, tiny_segformer
from worker import sgd

WORKER = Path(__file__).with_name("worker.py")


def _two_processes_and_one(tmp_path, *common: str, patch: str = "") -> tuple[dict, dict]:
    """(one process of batch 4, two processes of batch 2): the final weights of each."""
    data = make_folder(tmp_path / "data", n_train=8, n_val=0)
    model = tiny_model_file(tmp_path / "tiny.json")  # no dropout: the comparison is exact up to float order
    two = tmp_path / "two"
    args = tiny_args(data, two, model, *common, "--batch-size", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEGFORMER_TEST_PATCH": patch}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run([*launch, str(WORKER), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 x 2 processes" in proc.stderr  # really ran as two processes of batch 2

    one = tmp_path / "one"
    assert main(tiny_args(data, one, model, *common, "--batch-size", "4")) == 0
    ref = torch.load(one / "last.pt", weights_only=True)["model"]
    got = torch.load(two / "last.pt", weights_only=True)["model"]
    return ref, got


def _moved(ref: dict) -> float:
    torch.manual_seed(0)  # the run's seed: its initial weights
    init = tiny_segformer().state_dict()
    return min((ref[k] - init[k]).abs().max().item() for k in ("head.classifier.weight", "head.fuse.weight"))


@pytest.mark.slow
def test_two_process_gloo_matches_one_process_with_same_global_batch(tmp_path):
    # No rescale and crops inside the image: every pixel labelled, so both ranks' losses average the same count.
    # Adam's early steps are about +-lr per element whatever the gradient's size, so float-order noise in small
    # gradients becomes a fraction of lr: a small lr keeps the 1e-5 comparison meaningful.
    common = ("--iters", "4", "--warmup-iters", "0", "--lr", "2e-4", "--ratio-range", "1,1", "--save-every", "0")
    ref, got = _two_processes_and_one(tmp_path, *common)
    # These have an exactly zero gradient: a per-channel constant that the decoder BN subtracts again (the
    # projection biases, and the last stage norm's bias, which only feeds a projection). Their float-noise
    # gradients differ between 1 and 2 processes and Adam turns any noise into a step of about lr, so they (and the
    # BN running mean they shift) are not comparable; every other tensor must agree.
    degenerate = {f"head.proj.{i}.bias" for i in range(4)} | {"encoder.stages.3.norm.bias", "head.bn.running_mean"}
    diffs = {k: (got[k].double() - v.double()).abs().max().item() for k, v in ref.items() if v.is_floating_point()}
    worst = max(v for k, v in diffs.items() if k not in degenerate)
    assert worst <= 1e-5, sorted(((k, v) for k, v in diffs.items() if k not in degenerate), key=lambda kv: -kv[1])[:5]
    assert _moved(ref) > 100 * worst  # the runs really trained: the agreement is not vacuous


@pytest.mark.slow
def test_two_process_sgd_matches_one_process_so_gradient_scale_bugs_fail(tmp_path, monkeypatch):
    # Adam normalises the gradient away: gradients summed over the 2 processes instead of averaged would still pass
    # the test above. Plain SGD steps by lr x gradient, so such a bug doubles every step and misses by the step size.
    monkeypatch.setattr(loop_module, "build_optimizer", sgd)
    common = ("--iters", "4", "--warmup-iters", "0", "--lr", "0.05", "--ratio-range", "1,1", "--save-every", "0")
    ref, got = _two_processes_and_one(tmp_path, *common, patch="sgd")
    diffs = {k: (got[k].double() - v.double()).abs().max().item() for k, v in ref.items() if v.is_floating_point()}
    worst = max(diffs.values())  # SGD keeps float noise as small as it is: every tensor is comparable
    assert worst <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    assert _moved(ref) > 1000 * worst  # a 2x (or 0.5x) gradient would miss by about this much
