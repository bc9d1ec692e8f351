"""Writing files and folders so that a crash or a full disk never leaves a half-written one in place."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Below this many free bytes after a failed write, the failure is taken for a full disk: writers that do not pass
# the OSError through say something else (torch.save: "unexpected pos ...", safetensors: "I/O error: ...").
FULL_DISK_MARGIN = 1 << 20


def disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    """Whether a write into `folder` that raised `error` failed for want of space (or quota)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if any(s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_MARGIN
    except OSError:
        return False


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` (atomic on POSIX).

    The data is flushed to disk (fsync) before the rename. On any error the temporary file is removed and `path`
    keeps its previous content; a full disk is reported as one OSError(ENOSPC) line naming `path`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if disk_full(e, path.parent):
            raise OSError(errno.ENOSPC, f"{path}: no space left on device; the previous file is intact") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_folder(path: str | os.PathLike, files: Mapping[str, Callable[[Path], Any]]) -> Path:
    """Write a folder all-or-nothing: each `files[name](file)` writes one file of a temporary folder beside `path`,
    which then takes the place of `path` in one step (renameat2 RENAME_EXCHANGE on Linux; elsewhere two renames).

    Files already in `path` that `files` does not name are kept (hard-linked, or copied, into the new folder). On any
    error `path` is left as it was; a full disk is one OSError(ENOSPC) line naming the file that did not fit.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.is_dir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    name = ""
    try:
        for name, write in files.items():
            write(tmp / name)
        name = ""
        if path.is_dir():
            _carry_over(path, tmp)
        _fsync_tree(tmp)
        _swap(tmp, path)
    except Exception as e:
        if disk_full(e, path.parent):
            what = path / name if name else path
            kept = f"the previous {path}/ is intact" if existed else f"{path}/ was not created"
            raise OSError(errno.ENOSPC, f"{what}: no space left on device; {kept}") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after the swap it holds the old folder
    return path


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, new: Path) -> None:
    """What `old` holds and `new` does not, into `new` (hard links: no data is copied where the disk allows)."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(new: Path, path: Path) -> None:
    """Put folder `new` at `path`; an existing `path` ends up at `new` (or is removed)."""
    if not path.exists():
        os.rename(new, path)
        return
    if _exchange(new, path):
        return
    old = new.with_name(new.name + ".old")  # no atomic exchange here: a short window without `path`
    os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_npy(path: str | os.PathLike, array: Any) -> Path:
    """`np.save(path, array)`, atomically (and at exactly `path`: np.save given a name would append .npy to it)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)


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
