"""Who may do what on a shared server: owners, the teacher, read-only demos.

- Every browser gets a random owner token; the runs it starts belong to it. Everybody sees every
  run; only its owner or the teacher may stop, resume, rename or delete it.
- The teacher signs in with a password the operator sets (``$EFFNET_TEACHER_PASSWORD``, or
  ``teacher_password`` in Streamlit's secrets). With no password set (one person on a laptop),
  everybody is the teacher.
- ``$EFFNET_READONLY=1`` (a public demo): nothing can be started, stopped or deleted.
- Each owner may have a few runs queued or training at once (``$EFFNET_MAX_QUEUED``, default 2),
  so one student cannot fill the queue for the class; the teacher has no limit.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any

PASSWORD_ENV, READONLY_ENV, MAX_QUEUED_ENV = "EFFNET_TEACHER_PASSWORD", "EFFNET_READONLY", "EFFNET_MAX_QUEUED"
DEFAULT_MAX_QUEUED = 2
OWNER_TOKEN = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Caller:
    """Who asks: a browser's owner token and whether it is the teacher. ``Caller.operator()``: the command line."""

    owner: str | None
    teacher: bool = False

    @classmethod
    def operator(cls) -> Caller:
        return cls(None, teacher=True)

    def may_manage(self, run: Any) -> bool:
        """Only a run's owner (``run.owner``), or the teacher, may stop, resume, rename or delete it."""
        return self.teacher or (run.owner is not None and run.owner == self.owner)


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


def max_queued() -> int:
    """Queued or training runs one owner may have at once."""
    try:
        return max(1, int(os.environ.get(MAX_QUEUED_ENV, DEFAULT_MAX_QUEUED)))
    except ValueError:
        return DEFAULT_MAX_QUEUED
