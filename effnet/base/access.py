"""Who may do what on a shared server: owners, the teacher, read-only demos, quotas, and the signed cookies.

- **Owners.** Every browser gets a random owner token, kept in a signed, HttpOnly cookie (never in the page
  address, a link or an export, so a projector shows nothing to copy). The runs, datasets and imports it
  makes belong to it. Everybody sees every run; only its owner or the teacher may stop, resume, rename,
  compress or delete it.
- **The teacher** signs in with the password the operator sets (``$EFFNET_TEACHER_PASSWORD``, or
  ``teacher_password`` in Streamlit's secrets) on the sign-in page; the browser then holds a signed teacher
  cookie that expires after ``$EFFNET_TEACHER_HOURS`` (default 4: a class), survives reloads and new tabs,
  and stops working when the password changes. With no password set (one person on a laptop), everybody
  is the teacher. Wrong passwords and signing out: ``signin``.
- ``$EFFNET_READONLY=1`` (a public demo): nothing can be started, stopped, uploaded or deleted.
- **Quotas** (students only; the teacher and the command line have none): runs queued or training at once,
  own datasets (count and bytes), imported runs, compressions at work, and a bytes budget for the data folder
  and for the checkpoints folder (``limits``). Each is checked by the library function that writes, not by a button,
  under a lock held until the write is done (``quota_lock``, or the queue's and the imports' own locks), so
  parallel clicks cannot all pass one count.

Cookies are signed with HMAC-SHA256 under the server's secret: ``$EFFNET_SECRET``, else a random key kept in
``<checkpoints>/.secret`` (mode 0600), so every app process over one checkpoints folder agrees.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.base import files, locks, schemas
from effnet.base.schemas import OWNER_TOKEN

PASSWORD_ENV, READONLY_ENV, MAX_QUEUED_ENV = "EFFNET_TEACHER_PASSWORD", "EFFNET_READONLY", "EFFNET_MAX_QUEUED"
SECRET_ENV, TEACHER_HOURS_ENV, PER_ADDRESS_ENV = "EFFNET_SECRET", "EFFNET_TEACHER_HOURS", "EFFNET_QUOTA_PER_ADDRESS"
OWNER_COOKIE, TEACHER_COOKIE = "effnet_owner", "effnet_teacher"
DEFAULT_MAX_QUEUED = 2


@dataclass(frozen=True)
class Caller:
    """Who asks: a browser's owner token and whether it is the teacher. ``Caller.operator()``: the command line.
    ``peers``: the other owners whose things count against this one's quotas (``quota_peers``; empty unless the
    server counts quotas per address)."""

    owner: str | None
    teacher: bool = False
    peers: frozenset[str] = frozenset()

    @classmethod
    def operator(cls) -> Caller:
        return cls(None, teacher=True)

    def may_manage(self, thing: Any) -> bool:
        """Only a thing's owner (``thing.owner``: a run, a dataset), or the teacher, may change or delete it."""
        return self.teacher or (thing.owner is not None and thing.owner == self.owner)

    def counts(self, owner: str | None) -> bool:
        """Whether a thing of ``owner`` counts against this caller's quotas: its own, or a peer's."""
        return owner is not None and (owner == self.owner or owner in self.peers)


def caller_of(root: Path, owner: str | None, teacher: bool) -> Caller:
    """A browser's ``Caller``: its owner, whether it is the teacher, and (for a student, with per-address quotas)
    the owners sharing its quotas."""
    return Caller(owner, teacher, frozenset() if teacher else quota_peers(root, owner))


def check(caller: Caller | None, thing: Any, action: str, what: str = "run") -> None:
    """``PermissionError`` saying why when a browser may not ``action`` ``thing``; ``caller=None`` is the operator
    (command line), who may do anything."""
    if caller is None:
        return
    check_writable(caller, action)
    if not caller.may_manage(thing):
        raise PermissionError(f"this {what} belongs to another user; only its owner or the teacher may {action} it")


def check_writable(caller: Caller | None, action: str) -> None:
    """``PermissionError`` on a read-only demo server, for a browser (``caller``) about to write anything."""
    if caller is not None and readonly():
        raise PermissionError(f"this server is a read-only demo: nothing can be changed here ({action} refused)")


def nickname(owner: str | None) -> str:
    """How the teacher's pages name an owner without showing its token (a secret): ``student 3f2a9c``."""
    if owner is None:
        return "the command line"
    return f"student {nickname_code(owner)}"


NAMES = ".names.json"  # <checkpoints>/.names.json: {nickname's code: the name the teacher gave that student}
CODE = re.compile(r"[0-9a-f]{6}")  # a nickname's code: "student 3f2a9c"


def nickname_code(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:6]


@functools.lru_cache(maxsize=4)
def _names(path: Path, version: tuple[int, int]) -> dict[str, str]:
    """The teacher's names for students, read once per version of the file (``version``: its mtime and size)."""
    data = files.read_json(path)
    if not isinstance(data, dict):
        return {}
    names = {}
    for code, name in data.items():
        try:
            names[code] = schemas.clean_label(name)
        except ValueError:
            continue  # a damaged entry: that student keeps their code
    return {k: v for k, v in names.items() if isinstance(k, str) and CODE.fullmatch(k)}


def names(root: Path) -> dict[str, str]:
    path = Path(root) / NAMES
    try:
        st = os.lstat(path)
    except OSError:
        return {}
    return _names(path, (st.st_mtime_ns, st.st_size))


def named(owner: str | None, root: Path) -> str:
    """An owner as pages name them: the teacher's name for the student and its code ("Ada (student 3f2a9c)"), else
    the code alone (``nickname``), which the student's sidebar shows them, so the teacher can match the two."""
    given = names(root).get(nickname_code(owner)) if owner is not None else None
    return f"{given} ({nickname(owner)})" if given else nickname(owner)


def set_name(root: Path, code: str, name: str, caller: Caller | None) -> None:
    """The teacher names the student whose nickname's code is ``code`` (an empty name takes the name back)."""
    check_writable(caller, "naming a student")
    if caller is not None and not caller.teacher:
        raise PermissionError("only the teacher may name students")
    if not CODE.fullmatch(code):
        raise ValueError(f"code: a student's code is 6 letters and digits, as in 'student 3f2a9c'; got {code!r}")
    name = schemas.clean_label(name) if name.strip() else ""
    if len(name) > 40:
        raise ValueError("name: at most 40 characters")
    with locks.exclusive(Path(root) / f"{NAMES}.lock"):
        current = dict(names(root))
        current.pop(code, None)
        files.write_json(Path(root) / NAMES, current | ({code: name} if name else {}))


def new_owner_token() -> str:
    return secrets.token_hex(16)


def valid_owner_token(value: object) -> bool:
    return isinstance(value, str) and OWNER_TOKEN.fullmatch(value) is not None


def teacher_password(secret: str | None = None) -> str | None:
    """The operator's teacher password: the environment, else the app's secret; None when unset."""
    return os.environ.get(PASSWORD_ENV) or secret or None


def is_teacher_password(given: str, expected: str | None) -> bool:
    """Constant-time comparison; with no password set, nobody needs one."""
    if expected is None:
        return True
    return hmac.compare_digest(given.encode(), expected.encode())


def readonly() -> bool:
    return os.environ.get(READONLY_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- quotas
def _env_number(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """What one student may hold at once on a class server (the teacher and the command line are not limited)."""

    queued: int  # runs queued or training ($EFFNET_MAX_QUEUED)
    datasets: int  # own datasets ($EFFNET_MAX_DATASETS)
    dataset_bytes: int  # all of one's own datasets together ($EFFNET_MAX_DATASET_MB)
    imported_runs: int  # runs brought in by bundles ($EFFNET_MAX_IMPORTED)
    compressions: int  # compressions at work at once ($EFFNET_MAX_COMPRESSING, at least 1): each holds the CPU
    disk_bytes: int  # the data folder, and the checkpoints folder, each for everybody ($EFFNET_DISK_BUDGET_GB)


def limits() -> Limits:
    return Limits(queued=max(1, int(_env_number(MAX_QUEUED_ENV, DEFAULT_MAX_QUEUED))),
                  datasets=int(_env_number("EFFNET_MAX_DATASETS", 3)),
                  dataset_bytes=int(_env_number("EFFNET_MAX_DATASET_MB", 500) * 1024**2),
                  imported_runs=int(_env_number("EFFNET_MAX_IMPORTED", 20)),
                  compressions=max(1, int(_env_number("EFFNET_MAX_COMPRESSING", 1))),
                  disk_bytes=int(_env_number("EFFNET_DISK_BUDGET_GB", 50) * 1024**3))


def max_queued() -> int:
    """Queued or training runs one owner may have at once."""
    return limits().queued


def limited(caller: Caller | None) -> bool:
    """Whether quotas apply: to students; the teacher and the command line (``None``) have none."""
    return caller is not None and not caller.teacher


SHARED_QUOTA = " (with the other browser windows of your computer)"  # per-address quotas, in a student's words


def _with_peers(caller: Caller) -> str:
    return SHARED_QUOTA if caller.peers else ""


def check_runs(caller: Caller | None, adding: int, held: Callable[[], int]) -> None:
    """Refuse ``adding`` runs that would take a student past the runs one may have queued or training at once
    (``held``: how many they have now, counted only when a quota applies)."""
    check_writable(caller, "starting a run")
    if not limited(caller):
        return
    limit = max_queued()
    if adding > limit:  # e.g. a student's 4-run methods study: waiting would never make room
        raise ValueError(f"This starts {adding} runs, and each student may have {limit} queued or training at "
                         "once: ask the teacher to start it (the teacher has no limit)")
    mine = held()
    if mine + adding > limit:
        raise ValueError(f"You{_with_peers(caller)} already have {mine} run(s) queued or training, and each "
                         f"student may have {limit} at once: wait for one to finish, or stop one")


def quota_lock(root: Path, caller: Caller | None) -> contextlib.AbstractContextManager:
    """Held around a student's quota check and the write it allows (one lock per owner, a file in ``root``):
    parallel clicks then cannot all pass one count (3 imports at once gave 45 runs against a limit of 20).
    Nothing to hold for the teacher or the command line, who have no quota."""
    if not limited(caller):
        return contextlib.nullcontext()
    # Owners who share a quota (per-address quotas) share its lock too.
    name = "shared" if per_address() or not caller.owner else hashlib.sha256(caller.owner.encode()).hexdigest()[:16]
    return locks.exclusive(Path(root) / f".quota-{name}.lock")


def check_imports(caller: Caller | None, adding: int, held: Callable[[], int], size: int, root: Path,
                  fresh: bool = False) -> None:
    """Refuse a bundle of ``adding`` runs (``size`` bytes) past a student's imported runs or the disk budget
    (``fresh``: the last check, under the imports lock: the disk counted now)."""
    check_writable(caller, "import")
    if not limited(caller):
        return
    limit, mine = limits().imported_runs, held()
    if mine + adding > limit:
        raise ValueError(f"You{_with_peers(caller)} have {mine} imported run(s), this bundle holds {adding}, and "
                         f"each student may import {limit}: delete some, or ask the teacher to import it")
    check_disk_budget(caller, size, root, fresh=fresh)


def check_compressions(caller: Caller | None, held: Callable[[], int]) -> None:
    """Refuse a student's compression while they have as many at work as one may (``held``: how many now)."""
    check_writable(caller, "compressing")
    if not limited(caller):
        return
    limit, mine = limits().compressions, held()
    if mine >= limit:
        raise ValueError(f"You{_with_peers(caller)} have {mine} compression(s) at work, and each student may have "
                         f"{limit} at once: wait for it to finish, or ask the teacher (each holds the CPU while it "
                         "works)")


def dataset_allowance(caller: Caller | None, held: Callable[[], tuple[int, int]], declared: int, root: Path,
                      most: int, unpacked: int | None = None) -> int:
    """The bytes an upload of ``declared`` bytes may unpack to (at most ``most``): what is left of a student's
    dataset allowance (``held``: their datasets' count and bytes); refused past the count or the disk budget.
    ``unpacked``: the last check, under the names lock, with the size it really unpacked to (refused past the
    allowance; the disk counted now)."""
    check_writable(caller, "adding a dataset")
    if not limited(caller):
        return most
    limit, (count, used) = limits(), held()
    if count >= limit.datasets:
        raise ValueError(f"You{_with_peers(caller)} have {count} dataset(s), and each student may have "
                         f"{limit.datasets}: delete one first, or ask the teacher")
    check_disk_budget(caller, declared if unpacked is None else unpacked, root, fresh=unpacked is not None)
    allowance = max(0, min(limit.dataset_bytes - used, most))
    if unpacked is not None and unpacked > allowance:
        raise ValueError(f"With your other datasets this one ({unpacked / 1024**2:,.1f} MB) is over the "
                         f"{limit.dataset_bytes / 1024**2:,.0f} MB each student may have: delete one first, or ask "
                         "the teacher")
    return allowance


# Folders of work in flight, the prefixes of their names: a bundle being imported (experiments.bundle) and an
# upload being unpacked (data.folder) stage there, and appear under their own names only when complete.
IMPORTING, UNPACKING = ".import-", ".staging-"
IN_FLIGHT = (IMPORTING, UNPACKING)
_USAGE: dict[tuple[str, ...], tuple[float, int]] = {}
_USAGE_LOCK = threading.Lock()
USAGE_TTL_S = 30.0


def folder_bytes(*folders: Path, fresh: bool = False) -> int:
    """Bytes of regular files under ``folders`` that have landed, remembered for ``USAGE_TTL_S``: walking thousands
    of files on every click would cost more than the check is worth. ``fresh``: count now (the last check before
    a write, under its lock: 8 parallel uploads all passed one remembered count).

    Links are not followed, and work in flight (``IN_FLIGHT``: an import or an upload being unpacked) is not
    counted: each write's last check adds its own size, so parallel uploads do not refuse each other for bytes
    that are only passing through. Everything else counts, caches (a dataset's decoded tensors) included."""
    key = tuple(str(f) for f in folders)
    with _USAGE_LOCK:
        hit = _USAGE.get(key)
    if not fresh and hit is not None and time.monotonic() - hit[0] < USAGE_TTL_S:
        return hit[1]
    total = 0
    for folder in folders:
        for base, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(IN_FLIGHT)]
            for name in names:
                try:
                    st = os.lstat(os.path.join(base, name))
                except OSError:
                    continue
                total += st.st_size if not os.path.islink(os.path.join(base, name)) else 0
    with _USAGE_LOCK:
        _USAGE[key] = (time.monotonic(), total)
    return total


def check_disk_budget(caller: Caller | None, adding: int, *folders: Path, fresh: bool = False) -> None:
    """``ValueError`` when a student's write of ``adding`` bytes would take ``folders`` past the server's budget
    (``fresh``: counted now, not remembered)."""
    if not limited(caller):
        return
    budget = limits().disk_bytes
    used = folder_bytes(*folders, fresh=fresh)
    if used + adding > budget:
        raise ValueError(f"The server's disk budget is used up: {used / 1024**3:.1f} GiB of its "
                         f"{budget / 1024**3:.0f} GiB are taken here, and this would add {adding / 1024**2:,.0f} MB. "
                         "Delete old runs or datasets, or ask the teacher")


# ----------------------------------------------------------------------------- quotas per address
# A new private window is a new owner, with fresh quotas. Where the operator sets $EFFNET_QUOTA_PER_ADDRESS=1
# (students reach the server directly, one computer each), quotas count everything of every owner that loaded a
# page from the same address in the last day. Behind a reverse proxy every browser has the proxy's address, and
# the whole class would share one quota: leave it off there.
# Nobody is dropped from the book before the day is over: a script minting cookies must not push a student's own
# window out (and with it their runs out of their address's count).
ADDRESSES, ADDRESS_MEMORY_S, ADDRESS_REFRESH_S = ".addresses.json", 24 * 3600.0, 3600.0


def per_address() -> bool:
    return os.environ.get(PER_ADDRESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _address_book(root: Path) -> dict[str, dict[str, float]]:
    """``<root>/.addresses.json``: a digest of each address -> {owner token: when last seen}; {} when unreadable."""
    book = files.read_json(Path(root) / ADDRESSES)
    if not isinstance(book, dict):
        return {}
    return {k: {o: float(t) for o, t in v.items() if valid_owner_token(o) and isinstance(t, int | float)}
            for k, v in book.items() if isinstance(k, str) and isinstance(v, dict)}


def _address_key(address: str) -> str:
    return hashlib.sha256(address.encode()).hexdigest()[:24]  # the book holds no address in the clear


def remember_address(root: Path, owner: str | None, address: str | None, now: float | None = None) -> None:
    """Note that ``owner`` loaded a page from ``address`` (only with per-address quotas; written at most once an
    hour per owner and address, so page loads stay cheap)."""
    if not per_address() or not valid_owner_token(owner) or not address:
        return
    now, key = now or time.time(), _address_key(address)
    if now - _address_book(root).get(key, {}).get(owner, -math.inf) < ADDRESS_REFRESH_S:
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    with locks.exclusive(Path(root) / f"{ADDRESSES}.lock"):
        book = {k: {o: t for o, t in v.items() if now - t < ADDRESS_MEMORY_S}
                for k, v in _address_book(root).items()}
        book.setdefault(key, {})[owner] = now
        files.write_json(Path(root) / ADDRESSES, {k: v for k, v in book.items() if v})


def quota_peers(root: Path, owner: str | None, now: float | None = None) -> frozenset[str]:
    """The other owners seen at an address ``owner`` loaded pages from in the last day (per-address quotas only)."""
    if not per_address() or owner is None:
        return frozenset()
    now = now or time.time()
    peers: set[str] = set()
    for seen in _address_book(root).values():
        if now - seen.get(owner, -math.inf) < ADDRESS_MEMORY_S:
            peers |= {o for o, t in seen.items() if now - t < ADDRESS_MEMORY_S}
    return frozenset(peers - {owner})


def forget_usage() -> None:
    """Drop the remembered folder sizes (after a delete, the next check counts again)."""
    with _USAGE_LOCK:
        _USAGE.clear()


# ----------------------------------------------------------------------------- signed cookies
def server_secret(root: Path) -> bytes:
    """The key cookies are signed with: ``$EFFNET_SECRET``, else ``<root>/.secret`` (made once, mode 0600)."""
    given = os.environ.get(SECRET_ENV)
    if given:
        return given.encode()
    return _stored_secret(Path(root).resolve())


@functools.lru_cache(maxsize=8)
def _stored_secret(root: Path) -> bytes:
    path = root / ".secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    tmp = path.with_name(f".secret.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # first writer wins: two app processes starting at once agree on one key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def _mac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_owner(token: str, key: bytes) -> str:
    """The owner cookie's value: the token and its signature (a browser cannot choose someone else's token)."""
    return f"{token}.{_mac(key, 'owner|' + token)}"


def owner_from_cookie(value: object, key: bytes) -> str | None:
    """The owner token a cookie carries when its signature is ours; None otherwise."""
    if not isinstance(value, str) or value.count(".") != 1:
        return None
    token, mac = value.split(".")
    if not valid_owner_token(token) or not hmac.compare_digest(mac, _mac(key, "owner|" + token)):
        return None
    return token


def teacher_hours() -> float:
    return min(24.0, _env_number(TEACHER_HOURS_ENV, 4.0)) or 4.0


def _teacher_key(key: bytes, password: str) -> bytes:
    """A teacher cookie is signed under the password too: changing the password signs every teacher out."""
    return hmac.new(key, b"teacher|" + password.encode(), hashlib.sha256).digest()


def sign_teacher(key: bytes, password: str, now: float | None = None) -> str:
    """A teacher cookie: its expiry and a nonce, signed; good for ``teacher_hours()``."""
    expires = int((now or time.time()) + 3600 * teacher_hours())
    body = f"{expires}.{secrets.token_hex(8)}"
    return f"{body}.{_mac(_teacher_key(key, password), body)}"


def teacher_from_cookie(value: object, key: bytes, password: str | None, now: float | None = None) -> bool:
    """Whether a cookie is a teacher cookie we signed under this password, and not expired."""
    if password is None or not isinstance(value, str) or value.count(".") != 2:
        return False
    expires, nonce, mac = value.split(".")
    if not expires.isdigit() or not hmac.compare_digest(mac, _mac(_teacher_key(key, password), f"{expires}.{nonce}")):
        return False
    return int(expires) > (now or time.time())
