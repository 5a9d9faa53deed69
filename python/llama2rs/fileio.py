"""Writing files so that a failure never leaves a partial one behind."""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]


def atomic_write(path: Union[str, "os.PathLike[str]"], write_body: Callable[[BinaryIO], None]) -> None:
    """Call ``write_body(handle)`` on a temporary file beside ``path``, then rename it over
    ``path``. On any error (or interrupt) the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write_body(handle)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
