"""The teacher's sign-in on a shared server: wrong passwords counted on disk before they are checked, and
teacher cookies that signing out really ends.

Why on disk, and why first. A limiter that reads its wait, awaits the form and only then records the failure
lets 1,500 parallel guesses through (each passes the check before any failure is written); one in a process's
memory forgets everything on a restart and is not shared by a second app process. So ``Guesses.begin`` counts
the try under a file lock *before* the password is compared, and refuses while a wait is running; a right
password clears its own counts afterwards.

Who waits. Every try counts against three keys: the browser (its owner cookie), its address and the whole
server. Each key has a few free tries, then a wait that doubles per failure up to ``MAX_WAIT_S``. There is no
lockout: behind a reverse proxy every student shares one address, and a student's ten wrong tries must not lock
the teacher out for minutes; the server-wide key bounds a guesser with any number of cookies and addresses to
one try per ``MAX_WAIT_S``. Counts are forgotten after ``FORGET_S`` of quiet and the file keeps at most
``MAX_KEYS`` keys, so fresh cookies cannot grow it. The operator clears it from the console with
``python -m effnet.housekeeping --reset-sign-in``.

Signing out adds the cookie's nonce to ``.signed-out.json`` until the cookie would have expired anyway, so a
copied teacher cookie stops working the moment its teacher signs out.
"""

from __future__ import annotations

import time
from pathlib import Path

from effnet.base import access, files, locks

GUESSES, SIGNED_OUT, LOCK = ".sign-in-guesses.json", ".signed-out.json", ".sign-in.lock"
FREE = {"browser": 3, "address": 5, "server": 10}
MAX_WAIT_S, FORGET_S, MAX_KEYS = 60.0, 3600.0, 2000


def _load(path: Path) -> dict:
    """The stored mapping, or an empty one when absent or damaged (a damaged file must not lock anybody out)."""
    try:
        data = files.load_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _recent(entry: object, now: float) -> bool:
    """A [count, last try] entry from the last ``FORGET_S``."""
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float)) \
        and now - entry[1] < FORGET_S


def _wait_s(key: str, entry: object, now: float) -> float:
    if not (_recent(entry, now) and isinstance(entry[0], int)):
        return 0.0
    count, last = entry
    free = FREE.get(key.split(":", 1)[0], FREE["browser"])
    if count < free:
        return 0.0
    return min(MAX_WAIT_S, max(0.0, last + min(MAX_WAIT_S, 2.0 ** min(count - free + 1, 16)) - now))


class Guesses:
    """Teacher-password tries over one checkpoints folder (every app process on it shares them)."""

    def __init__(self, root: Path) -> None:
        self.path, self.lock = root / GUESSES, root / LOCK

    @staticmethod
    def keys(address: str | None, owner: str | None) -> tuple[str, ...]:
        return f"browser:{owner or 'none'}", f"address:{address or '?'}", "server"

    def begin(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """Count one try for every key and return 0, or return the seconds to wait and count nothing."""
        now = time.time() if now is None else now
        with locks.exclusive(self.lock):
            table = {k: v for k, v in _load(self.path).items() if _recent(v, now)}
            wait = max(_wait_s(k, table.get(k), now) for k in keys)
            if wait > 0:
                return wait
            for key in keys:
                entry = table.get(key)
                count = entry[0] if entry and isinstance(entry[0], int) else 0
                table[key] = [count + 1, now]
            newest = sorted(table.items(), key=lambda kv: kv[1][1], reverse=True)[:MAX_KEYS]
            files.write_json(self.path, dict(newest))
        return 0.0

    def wait_s(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """Seconds before the next try from ``keys`` is checked (0: now)."""
        now = time.time() if now is None else now
        table = _load(self.path)
        return max(_wait_s(k, table.get(k), now) for k in keys)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        """A right password: this browser's and address's counts go (the server-wide one too: it was the teacher)."""
        with locks.exclusive(self.lock):
            table = _load(self.path)
            files.write_json(self.path, {k: v for k, v in table.items() if k not in keys})

    def reset(self) -> int:
        """Forget every count (the operator, from the console); how many keys were waiting."""
        with locks.exclusive(self.lock):
            now = time.time()
            waiting = sum(1 for k, v in _load(self.path).items() if _wait_s(k, v, now) > 0)
            self.path.unlink(missing_ok=True)
        return waiting


# ----------------------------------------------------------------------------- teacher cookies that sign out
def _nonce(cookie: object) -> str | None:
    return cookie.split(".")[1] if isinstance(cookie, str) and cookie.count(".") == 2 else None


def is_teacher(root: Path, cookie: object, key: bytes, password: str | None) -> bool:
    """A valid teacher cookie (``access.teacher_from_cookie``) that nobody has signed out."""
    if not access.teacher_from_cookie(cookie, key, password):
        return False
    return _nonce(cookie) not in _load(root / SIGNED_OUT)


def sign_out(root: Path, cookie: object, key: bytes, password: str | None) -> bool:
    """End a valid teacher ``cookie`` on the server: refused from now on, in every browser that holds a copy. Only
    valid cookies are kept (until they would have expired), so nobody can grow the file with made-up ones."""
    if not is_teacher(root, cookie, key, password):
        return False
    expires, nonce, _ = str(cookie).split(".")
    now = time.time()
    with locks.exclusive(root / LOCK):
        table = {n: e for n, e in _load(root / SIGNED_OUT).items() if isinstance(e, (int, float)) and e > now}
        table[nonce] = int(expires)
        files.write_json(root / SIGNED_OUT, table)
    return True
