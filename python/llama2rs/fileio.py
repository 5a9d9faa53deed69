"""Writing files so that a failure never leaves a partial one behind."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]


def _umask() -> int:
    """The process's umask. Linux says it in /proc; elsewhere it can only be read by setting it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, "os.PathLike[str]"], write_body: Callable[[BinaryIO], None]) -> None:
    """Call ``write_body(handle)`` on a temporary file beside ``path``, then rename it over
    ``path``. On any error (or interrupt) the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write_body(handle)
            # mkstemp's file is 0600; the result gets the mode an ordinary open() would give it.
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
