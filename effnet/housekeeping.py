"""What a crash can leave behind, cleaned up on the next look (the Train, Studies and Compress pages, ``jobs list``).

- an import killed half-way (``bundle.recover``): finished when all its checks had passed, else removed;
- an upload killed while unpacking (``folder.tidy``): its staging folder removed;
- a compression whose process is gone (``compressions.tidy``): marked failed, so it can be deleted;
- temporary files of atomic writes whose writer was killed, older than ``TEMP_AGE_S``;
- downloaded bundles (``bundle.cached_export``) nobody asked for within ``TEMP_AGE_S``.

``python -m effnet.housekeeping [--root DIR]`` does the same from a terminal and says what it did;
``--reset-sign-in`` forgets every wrong teacher password (``effnet.base.signin``), for a teacher made to wait.

Each piece holds a lock while it works, so only what no living process owns is touched. ``tidy`` runs at
most every ``EVERY_S`` per process: with thousands of runs, looking costs more than it finds.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from effnet.base import signin
from effnet.compression import compressions
from effnet.data import folder
from effnet.experiments import bundle
from effnet.training import runs

EVERY_S, TEMP_AGE_S = 30.0, 3600.0
_LAST: dict[tuple[str, str], float] = {}
_LOCK = threading.Lock()


def _stale_temp_files(root: Path) -> list[str]:
    done, now = [], time.time()
    for run_dir in (d for d in root.iterdir() if runs.is_run_id(d.name) and d.is_dir() and not d.is_symlink()):
        for tmp in run_dir.glob(".*.tmp"):
            try:
                if tmp.is_file() and not tmp.is_symlink() and now - tmp.stat().st_mtime > TEMP_AGE_S:
                    tmp.unlink()
                    done.append(f"removed {run_dir.name}/{tmp.name}")
            except OSError:
                continue
    return done


def tidy(root: str | os.PathLike | None, data_root: str | os.PathLike, force: bool = False) -> list[str]:
    """Clean up what interrupted imports, uploads, compressions and writes left; what was done, one line each."""
    root = runs.checkpoints_dir(root)
    key = (str(root), str(data_root))
    with _LOCK:
        if not force and time.monotonic() - _LAST.get(key, -EVERY_S) < EVERY_S:
            return []
        _LAST[key] = time.monotonic()
    if not root.is_dir():
        return folder.tidy(data_root)
    done = bundle.recover(root) + folder.tidy(data_root) + _stale_temp_files(root) + bundle.tidy_cache(root, TEMP_AGE_S)
    for info in runs.list_runs(root):
        if not info.damaged and (info.path / compressions.FOLDER).is_dir():
            done += compressions.tidy(info.path)
    return done


def main(argv: list[str] | None = None) -> int:
    from effnet.data.cifar import data_dir

    p = argparse.ArgumentParser(prog="python -m effnet.housekeeping", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", help="the checkpoints folder (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--data-dir", help="the data folder (default: $EFFNET_DATA or ./data)")
    p.add_argument("--reset-sign-in", action="store_true",
                   help="forget every wrong teacher password (a teacher made to wait can sign in at once)")
    args = p.parse_args(argv)
    if args.reset_sign_in:
        waiting = signin.Guesses(runs.checkpoints_dir(args.root)).reset()
        print(f"sign-in tries forgotten ({waiting} browsers, addresses or the server were waiting)")
        return 0
    for line in tidy(args.root, data_dir(args.data_dir), force=True) or ["nothing to clean up"]:
        print(line)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
