"""Zip files from strangers (run bundles, datasets uploaded as a zip): every member checked before one is unpacked.

A zip can name files outside the folder it is unpacked into (``../``, absolute paths, drive letters), hold
symbolic links, claim more members or bytes than a disk holds (a zip bomb), or lie in its headers about
a member's size. ``check_zip`` refuses all of these from the central directory alone; ``extract_member``
then writes one member as a new file and stops at its declared size.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

CHUNK = 1024 * 1024


class UnsafeZip(ValueError):
    """A zip refused; the message names the first offending member and why."""


def check_zip(zf: zipfile.ZipFile, max_members: int, member_limit: Callable[[str], int],
              max_total: int) -> list[zipfile.ZipInfo]:
    """The zip's file members, when none could escape or explode: no links, no ``..``, absolute paths or
    backslashes, no duplicates, at most ``max_members``, each declared size within ``member_limit(name)`` and
    all together within ``max_total``. ``UnsafeZip`` naming the first offender otherwise."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise UnsafeZip(f"it has {len(infos)} files; at most {max_members} are accepted")
    total, seen, files = 0, set(), []
    for info in infos:
        name = info.filename
        if name in seen:
            raise UnsafeZip(f"{name!r} appears twice")
        seen.add(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeZip(f"{name!r} is a symbolic link; links are refused")
        parts = name.rstrip("/").split("/")
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts or "" in parts or "." in parts:
            raise UnsafeZip(f"{name!r} points outside the zip; refused")
        if name.endswith("/"):
            continue  # a folder entry: folders are made from the file names
        if info.file_size > member_limit(name):
            raise UnsafeZip(f"{name!r} declares {info.file_size:,} bytes, over the {member_limit(name):,} allowed")
        total += info.file_size
        files.append(info)
    if total > max_total:
        raise UnsafeZip(f"it would unpack to {total:,} bytes, over the {max_total:,} allowed")
    return files


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """One checked member to ``target`` (a new file), stopped at its declared size: a lying header is refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UnsafeZip(f"{info.filename!r} unpacks to more than it declares; refused")
            dst.write(chunk)
