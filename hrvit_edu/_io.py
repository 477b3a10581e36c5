"""Files the package writes for itself (checkpoints, run caches, data caches): written atomically,
and named in the error when they cannot be read back."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then ``os.replace`` it into place:
    a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_or_explain(path: str | os.PathLike, read: Callable[[Path], object], what: str):
    """``read(path)``, turning any failure into one error that names the file and the way out."""
    path = Path(path)
    try:
        return read(path)
    except Exception as e:  # noqa: BLE001 - truncated zip/pickle, wrong format, ...
        raise ValueError(f"could not read the {what} {path} ({type(e).__name__}: {e}); "
                         "delete it to rebuild it") from e
