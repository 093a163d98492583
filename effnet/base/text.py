"""Text written for people: ``1.23 M`` parameters, ``1 min 35 s``, ``b0-3-ep`` in a folder name, and text from
people made safe to show (``without_controls``)."""

from __future__ import annotations

import re
import unicodedata

_UNITS = (("G", 1e9), ("M", 1e6), ("k", 1e3))


def si(value: float, decimals: int | None = 2) -> str:
    """``1234567`` -> ``1.23 M`` (``decimals`` after the point); with ``decimals=None``, ``1500000`` -> ``1.5M``
    (as short as the value allows: axis ticks)."""
    for unit, size in _UNITS:
        if abs(value) >= size:
            return f"{value / size:g}{unit}" if decimals is None else f"{value / size:.{decimals}f} {unit}"
    return f"{value:g}" if decimals is None else f"{value:.0f}"


def duration(seconds: float) -> str:
    """``95`` -> ``1 min 35 s``: how long, for people."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def counted(n: int, noun: str) -> str:
    """``1 run``, ``12 runs``: a count with its noun (regular plurals only)."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def slug(text: str, default: str = "run") -> str:
    """A piece of a folder name from any text: lower-case letters and digits joined by dashes, at most 40."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or default


def without_controls(text: str) -> str:
    """``text`` without control, format (bidirectional overrides, which can reorder what others see), private-use
    or unassigned characters (Unicode categories C*), whitespace collapsed to single spaces."""
    return " ".join("".join(c for c in text if unicodedata.category(c)[0] != "C").split())


def headline(text: str, most: int = 90) -> str:
    """The first clause of a message (up to its first ':', ';' or '. ', after a leading ``field:``), at most
    ``most`` characters, ending at a word: what a toast can show whole (Streamlit folds a longer one), the full
    message being shown elsewhere."""
    field = re.match(r"[a-z_][a-z0-9_]*: ", text)
    start = field.end() if field else 0
    first = text[:start] + re.split(r"(?<=\w)[:;]\s|\.\s", text[start:], maxsplit=1)[0].strip()
    if len(first) <= most:
        return first
    return first[:most].rsplit(" ", 1)[0].rstrip(",") + " …"
