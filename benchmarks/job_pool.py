"""Benchmark runs as subprocesses of their own script (`SCRIPT --job JSON`), a few at a time, each printing its
record as its last JSON line on stdout; used by short_runs.py and mixffn_vs_pe.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_jobs(
    script: str,
    jobs: list[dict[str, Any]],
    parallel: int,
    log_dir: Path,
    label: Callable[[dict[str, Any]], str],
    on_record: Callable[[dict[str, Any]], None],
    threads: int = 1,
    deadline: float = math.inf,
) -> list[dict[str, Any]]:
    """Run `jobs` (each with an "out" folder, whose name names its log in `log_dir`), `parallel` at a time with
    `threads` torch threads each; `on_record` sees each record as its job ends, a failed job is one FAILED line
    (`label(job)`). Jobs not started by `deadline` (time.time()) are skipped. The records, in order of ending."""
    done: list[dict[str, Any]] = []
    pending, running = list(jobs), []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    while pending or running:
        while pending and len(running) < parallel and time.time() < deadline:
            job = pending.pop(0)
            cmd = [sys.executable, script, "--job", json.dumps(job)]
            with (log_dir / f"{Path(job['out']).name}.log").open("w") as log:  # the child keeps its own handle
                running.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True), job))
        if not running:
            break
        time.sleep(0.5)
        for proc, job in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, job))
            lines = [line for line in proc.stdout.read().splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"FAILED ({proc.returncode}): {label(job)}", flush=True)
                continue
            done.append(json.loads(lines[-1]))
            on_record(done[-1])
    if pending:
        print(f"deadline reached: {len(pending)} runs not started", flush=True)
    return done
