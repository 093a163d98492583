"""The app's compressions of finished runs: started in the background, watched, tidied, deleted. No torch here.

A compression (``python -m effnet.compress``, the work itself) writes into ``<run>/compressed/<time>/``:
compress.json, status.json, its log and one ONNX file per variant. The app starts one per run at a time
(``start``, under the folder's lock, as the run's owner or the teacher), shows its progress (``working``),
marks one whose process was killed as failed (``tidy``), stops them before the run is deleted (``stop_all``)
and deletes one on request (``delete_output``).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from effnet.base import access, files, locks, schemas, tasks
from effnet.base.processes import spawn_detached
from effnet.training import runs
from effnet.training.devices import cpu_locks

COMPRESS = "compress.json"
# A variant that loses more test top-1 than this against fp32 is called out on the page, with what to try.
LOSS_WARN_POINTS = 3.0
FOLDER = "compressed"  # the app's compressions: <run>/compressed/<time>/ (compress.json, status.json, log, .onnx)
COMPRESSOR = "effnet.compress"  # the module a compression's process runs


def check_run(run_dir: Path) -> None:
    """``ValueError`` unless ``run_dir`` is a finished run with a checkpoint (what compression needs)."""
    info = runs.read_run(run_dir)
    if info.damaged or info.config is None:
        raise ValueError(f"run: {run_dir} is not a readable run folder ({info.error or 'no config.json'})")
    if info.state != "finished" or runs.shown_checkpoint(run_dir) is None:
        raise ValueError(f"run: {run_dir.name} is {info.state}; compress a finished run")


# A compression fine-tunes for a few epochs and times each variant for seconds; past these bounds it is a training
# run, which belongs in the queue (a student's 10**9 fine-tune epochs held the device from everybody).
MAX_FINETUNE_EPOCHS, MAX_RATIOS, MAX_BUDGET_S = 20, 6, 30.0


def check_settings(qat_epochs: int, ratios: list[float], finetune_epochs: int, budget_s: float = 2.0) -> None:
    """ValueError naming the setting when a compression could not do what it is asked, or would be unbounded work."""
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise ValueError(f"prune: ratios must be between 0 and 1, got {bad}")
    if len(ratios) > MAX_RATIOS:
        raise ValueError(f"prune: at most {MAX_RATIOS} ratios at once, got {len(ratios)}")
    for name, epochs in (("qat_epochs", qat_epochs), ("finetune_epochs", finetune_epochs)):
        if not 0 <= epochs <= MAX_FINETUNE_EPOCHS:
            raise ValueError(f"{name}: must be 0 to {MAX_FINETUNE_EPOCHS} (longer is a training run), got {epochs}")
    if not (math.isfinite(budget_s) and 0 < budget_s <= MAX_BUDGET_S):
        raise ValueError(f"time_budget: must be more than 0 and at most {MAX_BUDGET_S:g} s, got {budget_s!r}")


def outputs(run_dir: Path) -> list[Path]:
    """The app's compressions of a run, newest first (symlinked folders are never followed)."""
    folder = run_dir / FOLDER
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.is_symlink()), reverse=True)


def working(out: Path) -> bool:
    """Whether the compression writing ``out`` is still at work (waiting for the CPU counts): ``tasks.at_work``."""
    return tasks.at_work(files.read_json(out / runs.STATUS) or {})


def at_work_of(root: Path, caller: access.Caller) -> int:
    """Compressions at work on the runs counted against ``caller`` (a student may compress only their own)."""
    return sum(working(out) for info in runs.list_runs(root) if caller.counts(info.owner) for out in outputs(info.path))


def tidy(run_dir: Path) -> list[str]:
    """Compressions of ``run_dir`` whose process is gone (killed, or the server restarted) are marked failed, so
    the page says so at once and they can be deleted."""
    done = []
    for out in outputs(run_dir):
        status = files.read_json(out / runs.STATUS) or {}
        if status.get("state") not in ("finished", "failed") and not working(out):
            files.write_json(out / runs.STATUS, {**status, "state": "failed",
                                                 "error": "the compression process is gone (killed, or the server "
                                                          "restarted); delete it and compress again"})
            done.append(f"marked the lost compression {run_dir.name}/{out.name} failed")
    return done


def stop_all(run_dir: Path, wait_s: float = 30.0) -> None:
    """Stop every compression of ``run_dir`` (SIGTERM, then wait), holding the start lock so none begins meanwhile:
    a run is deleted only once nothing writes into it."""
    if not (run_dir / FOLDER).is_dir():
        return
    with locks.exclusive(run_dir / FOLDER / ".start.lock"):
        busy = [out for out in outputs(run_dir) if working(out)]
        signalled: set[Path] = set()

        def stopped() -> bool:
            # One that has just started reports its pid only once Python and torch are loaded: signal it then.
            for out in busy:
                if out not in signalled and tasks.signal_stop(files.read_json(out / runs.STATUS) or {}, COMPRESSOR,
                                                              str(out)):
                    signalled.add(out)
            return not any(working(out) for out in busy)

        tasks.wait_until(stopped, wait_s, f"a compression of {run_dir.name}")


def delete_output(run_dir: Path, name: str, caller: Any = None) -> None:
    """Remove one compression of a run (its owner or the teacher; not while it works)."""
    import shutil

    access.check(caller, runs.read_run(run_dir), "delete compressions of")
    out = run_dir / FOLDER / name
    if out not in outputs(run_dir):
        raise ValueError(f"no compression {name!r} of {run_dir.name}")
    if working(out):
        raise ValueError("this compression is still at work; wait for it to finish")
    shutil.rmtree(out)


def start(run_dir: Path, root: Path, int8: bool, qat_epochs: int, ratios: list[float], finetune_epochs: int,
          budget_s: float = 2.0, caller: Any = None) -> Path:
    """``python -m effnet.compress`` in the background (its own session: it outlives the page that started it),
    holding the queue's CPU device locks: it waits for training on the CPU, and training waits for it.

    One compression of a run at a time: a second click, or a second student, is refused saying why."""
    access.check(caller, runs.read_run(run_dir), "compress")
    check_settings(qat_epochs, ratios, finetune_epochs, budget_s)
    if not int8 and not ratios:
        raise ValueError("nothing to compress: choose int8, a pruning ratio, or both")
    if (run_dir / FOLDER).is_symlink() or run_dir.is_symlink():
        raise ValueError(f"{run_dir.name}/{FOLDER} is a symbolic link: refused (compressions stay in the run's folder)")
    (run_dir / FOLDER).mkdir(exist_ok=True)  # not parents: a run deleted meanwhile is not brought back
    # Two clicks at once (or a student's clicks on several runs): one starts, the others are refused.
    with access.quota_lock(root, caller), locks.exclusive(run_dir / FOLDER / ".start.lock"):
        if not (run_dir / runs.STATUS).is_file():
            raise ValueError(f"run {run_dir.name} is being deleted")
        # The status is the process's own from here on; until it reports its pid, the start time says it is alive.
        busy = [d.name for d in outputs(run_dir) if working(d)]
        if busy:
            raise ValueError(f"this run is being compressed already (started {busy[0]}); wait for it to finish")
        access.check_compressions(caller, lambda: at_work_of(root, caller))
        out = run_dir / FOLDER / time.strftime("%Y%m%d-%H%M%S")
        out.mkdir()
        files.write_json(out / runs.STATUS, {"heartbeat": time.time(), "pid": None, "state": "starting", "step": 0,
                                             "steps": 1})
        spawn_detached([COMPRESSOR, str(run_dir), "--out", str(out), "--qat-epochs", str(qat_epochs),
                        "--finetune-epochs", str(finetune_epochs), "--prune", ",".join(f"{r:g}" for r in ratios),
                        "--time-budget", str(budget_s), *(["--int8"] if int8 else [])], out / runs.LOG,
                       {locks.DEVICE_LOCK_ENV: os.pathsep.join(str(p) for p in cpu_locks(root))})
    return out


def losing(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants of a compression that lost more than ``LOSS_WARN_POINTS`` of test top-1 against fp32."""
    rows = result["variants"]
    return [r for r in rows[1:] if rows[0]["test_top1"] - r["test_top1"] > LOSS_WARN_POINTS]


def load_result(out: Path) -> dict[str, Any] | None:
    """compress.json, validated (a damaged file raises ``files.Damaged``), or None when there is none yet."""
    data = files.load_json(out / COMPRESS)
    if data is None:
        return None
    schemas.parse(schemas.CompressFile, data, COMPRESS)
    return data


