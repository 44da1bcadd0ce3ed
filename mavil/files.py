"""Atomic file writes: a reader (or a relaunch after a crash) finds the old file or the new one, never half of one.

`atomic_write(path, data)` writes `data` to a partial file beside `path` (`partial_path`: `.<name>.partial`, or a
unique `.<name>.XXXXXXXX.partial` where several processes may write `path` at once) and renames it over `path`
once complete. It imports nothing of ours, so every part (model, data, engine) may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

PARTIAL = ".partial"


def partial_path(path: Path) -> Path:
    """Where `atomic_write` writes `path` before renaming it into place (a crash may leave it behind)."""
    return path.with_name(f".{path.name}{PARTIAL}")


def atomic_write(
    path: str | Path,
    data: str | bytes | Callable[[Path], object],
    *,
    fsync: bool = False,
    concurrent: bool = False,
) -> Path:
    """Writes `data` to `path` all or nothing; returns `path`. The parent directory must exist.

    data: text, bytes, or a function that writes the whole file at the path it is given (a library's writer:
    `lambda partial: save_file(state, str(partial))`). fsync: the bytes are on disk before the rename (a power cut
    leaves the old file or the new one). concurrent: several processes may write `path` at once; each writes its own
    partial file, made readable by all (0o644). Any failure removes the partial file and raises as it was.
    """
    path = Path(path)
    if concurrent:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent)
        os.close(handle)
        partial = Path(name)
    else:
        partial = partial_path(path)
    try:
        if concurrent:
            os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the file from the other users
        if isinstance(data, str):
            partial.write_text(data)
        elif isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            data(partial)
        if fsync:
            handle = os.open(partial, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
