"""One way to hold a lock shared between processes: an exclusive ``flock`` on a file.

The queue, its runner and each training run coordinate through files under the checkpoints folder
(``.queue.lock``, ``.runner.lock``, ``.device-*.lock``). ``flock`` is released by the kernel when the
holder exits, however it exits, so a killed process never leaves a lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

# The queue names the device lock(s) a run must hold while it trains (os.pathsep-separated paths).
DEVICE_LOCK_ENV = "EFFNET_DEVICE_LOCK"
# Under the checkpoints folder: queue transitions (submit, stop, resume, pick next, a scheduler's news) happen
# under QUEUE_LOCK; the local runner holds RUNNER_LOCK while it lives.
QUEUE_LOCK, RUNNER_LOCK = ".queue.lock", ".runner.lock"


# flock is missing on some shared filesystems (Lustre mounted without it answers one of these).
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def exclusive(path: Path, wait: bool = True, on_busy: Callable[[], None] | None = None,
              make_folder: bool = True, unlocked_if_unsupported: bool = False) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` for the ``with`` block; yields whether it is held.

    When another process holds it: with ``wait=False`` yield False at once; otherwise call ``on_busy``
    (to tell a user why nothing happens) and wait for it. ``make_folder=False``: a missing folder is a
    ``FileNotFoundError`` (a writer whose folder was deleted must not bring it back). ``unlocked_if_unsupported``:
    where the filesystem has no flock, go ahead unlocked (yields True) rather than fail.
    """
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Never through a symbolic link: a lock file planted as a link would have the lab create or touch its target.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_busy is not None:
                on_busy()
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as exc:
            if not (unlocked_if_unsupported and exc.errno in UNSUPPORTED):
                raise
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_held(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` now (a snapshot: it may change right after)."""
    if not path.exists():
        return False
    with exclusive(path, wait=False) as free:
        return not free
