"""A run's records: the history of log lines in RUN_DIR/metrics.jsonl, and TensorBoard scalars when asked for.

metrics.jsonl holds one JSON object per line: {"iter", "loss", "lr", "sec_per_iter"} every --log-every
iterations and {"iter", "mIoU", "aAcc", ...} per evaluation. On resume it is cut back to the checkpoint's
iteration first, so a killed and resumed run's log equals an uninterrupted one's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import disk_full, write_text

HISTORY_NAME = "metrics.jsonl"


def read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """The records of `path` up to iteration `upto` (lines cut by a kill are dropped); [] without the file."""
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


def write_history(path: Path, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line more; a failed write names the file (a line cut short is skipped by `read_history`)."""
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        reason = "no space left on device" if disk_full(e, path.parent) else (e.strerror or str(e))
        raise OSError(e.errno, f"{path}: {reason}") from None


def open_tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter logging to RUN_DIR/tensorboard; one clear line when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


class RunRecords:
    """The run's history in memory, mirrored to metrics.jsonl (and TensorBoard) when `write` (the main process).

    `resumed_at`: the iteration a resumed run continues from (the file is cut back to it), None for a new run.
    """

    def __init__(self, run_dir: Path, *, write: bool, resumed_at: int | None = None, tensorboard: bool = False) -> None:
        self.path = run_dir / HISTORY_NAME
        self.write = write
        self.history: list[dict[str, Any]] = []
        self.writer = None
        if write:
            self.history = read_history(self.path, resumed_at) if resumed_at is not None else []
            write_history(self.path, self.history)
            if tensorboard:
                self.writer = open_tensorboard(run_dir)

    def add(self, record: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        """Append `record` (it has an "iter"); `scalars` ({"train/loss": ...}) go to TensorBoard at that step."""
        if not self.write:
            return
        self.history.append(record)
        append_record(self.path, record)
        if self.writer is not None:
            for tag, value in (scalars or {}).items():
                self.writer.add_scalar(tag, value, record["iter"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
