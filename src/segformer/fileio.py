"""Writing files so that a crash or a full disk never leaves a half-written one in place."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` (atomic on POSIX).

    The data is flushed to disk (fsync) before the rename. On any error the temporary file is removed and `path`
    keeps its previous content; a full disk is reported as one line naming `path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"{path}: no space left on device; the previous file is intact") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def json_safe(value: Any) -> Any:
    """`value` with NaN as None (null: e.g. a class absent from labels and predictions) and keys as strings."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON (NaN written as null), atomically."""
    return write_text(path, json.dumps(json_safe(data), indent=2, default=float) + "\n")
