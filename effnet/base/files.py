"""Files on a shared server: read without following links and within a size bound, written atomically.

Nothing a run folder, a study folder or an upload holds is trusted. ``read_file`` opens with
``O_NOFOLLOW`` (a file swapped for a symbolic link is refused, not followed), checks that it is a
regular file and refuses one over its bound before reading it; ``read_tail`` reads only the end of a
file that may be large (a run's log). Writers write a temporary file beside the target, flush it to
disk and rename it into place (``atomic_write_bytes``), so a reader never sees half a file and a
killed writer leaves the old one.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_BYTES = 16 * 1024 * 1024


class Damaged(ValueError):
    """A file that exists but cannot be used; the message is ``<file>: <reason>``."""


def _open(path: Path) -> int:
    """A read-only descriptor of ``path``, never through a symbolic link; ``FileNotFoundError`` if absent."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():  # the last component is a link
            raise Damaged(f"{path.name}: is a symbolic link; refused") from exc
        if isinstance(exc, FileNotFoundError):
            raise
        raise Damaged(f"{path.name}: cannot be read ({exc.strerror})") from exc


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, never through a symbolic link, and only if it is a regular file (not a FIFO
    that would block, a device or a folder): the one door for every file a run folder, a bundle or a checkpoint
    names. ``FileNotFoundError`` if absent, ``Damaged`` otherwise."""
    fd = _open(path)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # checked on the descriptor, before Python's file object refuses a folder its own way
        os.close(fd)
        raise Damaged(f"{path.name}: is {'a folder' if stat.S_ISDIR(mode) else 'not a regular file'}, not a file")
    return os.fdopen(fd, "rb")


def read_file(path: Path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file, not following a symbolic link; ``FileNotFoundError`` if absent.

    ``Damaged`` for a link, a non-file or a file over ``max_bytes``.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise Damaged(f"{path.name}: {size:,} bytes, more than such a file may have")
        return f.read(max_bytes + 1)


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of a regular file (a log may be large: only its end is read)."""
    with open_regular(path) as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
        return f.read(max_bytes)


def load_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value at ``path``; None when missing; ``Damaged`` when present but not valid JSON.

    NaN and infinities are refused here, for every file: they are not JSON, and a NaN that reached a
    table or a chart would only look like a number.
    """
    try:
        raw = read_file(path, max_bytes)
    except FileNotFoundError:
        return None
    try:
        return loads(raw)
    except ValueError as exc:
        raise Damaged(f"{path.name}: not valid JSON ({exc})") from exc


def loads(raw: str | bytes) -> Any:
    """``json.loads`` that refuses NaN and infinities (``ValueError``), as every reader of the lab does."""
    return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """Lenient ``load_json`` for a writer's own files: None when missing or damaged."""
    try:
        return load_json(path)
    except Damaged:
        return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``.

    The folder must exist: a writer whose folder was deleted meanwhile (a run deleted while its compression
    starts) fails instead of bringing the folder back where nobody can see it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; runs are meant to be shared and read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(obj: Any) -> str:
    """JSON as the lab writes it: indented, and never NaN (``ValueError`` instead of an unreadable file)."""
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj).encode())


def write_status(path: Path, fields: dict[str, Any]) -> None:
    """``write_json`` for a status file, which must say "failed: disk full" even on a full disk.

    The atomic write needs room for a second copy; when there is none, the small file is
    overwritten in place (its old blocks are reused), so the reason still reaches the pages.
    """
    try:
        write_json(path, fields)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or not path.is_file() or path.is_symlink():
            raise
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            data = json.dumps(fields, allow_nan=False).encode()
            f.write(data)
            f.truncate(len(data))
