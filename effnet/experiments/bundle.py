"""Run bundles: a run, or a study with its runs, as one zip that opens on another install.

    python -m effnet.bundle export checkpoints/<run> b0.zip         # a run
    python -m effnet.bundle export checkpoints/studies/<study> s.zip # a study and all its runs
    python -m effnet.bundle export checkpoints/<a> checkpoints/<b> ab.zip  # several runs
    python -m effnet.bundle import b0.zip [--checkpoints DIR]        # prints the new run folder(s)

(``python -m effnet.runs export|import`` is the same command under its older name.) A refused bundle
exits non-zero with the reason on stderr and writes nothing.

Training CIFAR-100 takes a GPU for hours; the class sees the results on a laptop. A bundle carries
what the pages read and nothing else:

    bundle.json             {"format": 1, "kind": "run" | "runs" | "study", "runs": [names], "study": {...}?}
    runs/<name>/<file>      config.json, status.json, metrics.jsonl, confusion.json, job.json,
                            label.json, best.pt, last.pt (no logs: they hold paths of the other machine)

A bundle comes from someone else, so importing trusts nothing in it and checks everything before
anything is written: member names (no ``..``, absolute paths, backslashes or links), member count and
sizes (declared and actual: a zip bomb stops at its bound), the JSON through the run readers, each
checkpoint loaded with ``weights_only=True`` into the spec its run declares. Only then are the runs
copied in, each under a name no existing run has: an import never overwrites.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.analysis.results import load_confusion
from effnet.base import access, files, locks, schemas
from effnet.base.access import Caller
from effnet.base.safezip import CHUNK, UnsafeZip, check_zip, extract_member
from effnet.experiments import study
from effnet.training import runs
from effnet.training.checkpoint import CheckpointError

FORMAT = 1
MANIFEST = "bundle.json"
FILES = (runs.CONFIG, runs.STATUS, runs.METRICS, runs.CONFUSION, runs.JOB, runs.LABEL, runs.BEST, runs.LAST)
CHECKPOINTS = (runs.BEST, runs.LAST)
MAX_MEMBERS = 2000
MAX_CHECKPOINT_BYTES = 2 * 1024**3  # B7 with momentum and EMA is about 0.8 GB
MAX_BUNDLE_BYTES = 16 * 1024**3


class BundleError(ValueError):
    """A bundle that cannot be written or is refused; the message says why."""


# ----------------------------------------------------------------------------- export
def _run_files(run_dir: Path, resumable: bool) -> list[Path]:
    """The files of an ended run that travel: its JSON, best.pt, and last.pt (the optimizer state) only when the
    importer should be able to train it further (``resumable``; it triples a bundle's size)."""
    info = runs.read_run(run_dir)
    if info.damaged:
        raise BundleError(f"{run_dir.name} is {info.error}; it cannot be exported")
    if info.state not in runs.ENDED:
        raise BundleError(f"{run_dir.name} is {info.state}; export it once it has finished or been stopped")
    names = [f for f in FILES if resumable or f != runs.LAST or not (run_dir / runs.BEST).is_file()]
    return [run_dir / f for f in names if (run_dir / f).is_file() and not (run_dir / f).is_symlink()]


def _copy_into(zf: zipfile.ZipFile, path: Path, name: str) -> None:
    """A run file into the zip, opened without following links (a file swapped for a link is refused)."""
    try:
        src = files.open_regular(path)
    except (OSError, files.Damaged) as exc:
        raise BundleError(f"{path}: cannot be read ({exc})") from exc
    member = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_STORED if path.suffix == ".pt" else zipfile.ZIP_DEFLATED  # weights: no gain
    with src, zf.open(member, "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def _without_owner(path: Path) -> bytes:
    """job.json as it travels: no owner token (a secret of this server) and no data folder of this machine."""
    job = files.load_json(path) or {}
    config = job.get("config") if isinstance(job.get("config"), dict) else {}
    return files.dumps({**job, "owner": None, "config": {**config, "data_dir": None}}).encode()


def _contents(path: Path | list[Path], root: str | os.PathLike | None,
              resumable: bool) -> tuple[dict[str, Any], list[tuple]]:
    """(manifest, [(file, run name)]) of the bundle of the run or study folder ``path``, or of several runs."""
    if isinstance(path, list):
        if len(path) == 1:
            return _contents(path[0], root, resumable)
        names = [p.name for p in path]
        bad = [str(p) for p in path if not runs.is_run_folder(p) or p.is_symlink()]
        if bad or len(set(names)) < len(names):
            raise BundleError(f"{', '.join(bad) or 'two runs of the same name'}: several runs go in one bundle "
                              "only as run folders of distinct names")
        manifest = {"format": FORMAT, "kind": "runs", "runs": names}
        return manifest, [(f, folder.name) for folder in path for f in _run_files(folder, resumable)]
    if (path / study.STUDY).is_file():
        try:
            loaded = study.load(path, root)
        except study.StudyError as exc:
            raise BundleError(f"{path}: {exc}") from exc
        missing = [r.row["run"] for r in loaded.runs if r.info is None]
        if missing:
            raise BundleError(f"{path}: runs are missing: {', '.join(missing)}")
        folders = [r.info.path for r in loaded.runs]
        rows = [r.row | {"run": r.info.run_id} for r in loaded.runs]
        manifest = {"format": FORMAT, "kind": "study", "runs": [f.name for f in folders],
                    "study": loaded.data | {"runs": rows}}
    elif path.is_dir() and not path.is_symlink():
        folders = [path]
        manifest = {"format": FORMAT, "kind": "run", "runs": [path.name]}
    else:
        raise BundleError(f"{path}: neither a run folder nor a study folder")
    return manifest, [(f, folder.name) for folder in folders for f in _run_files(folder, resumable)]


CACHE = ".bundles"  # <checkpoints>/.bundles/<key>.zip: each bundle built once per version of its files


def cached_export(path: Path, root: Path, resumable: bool = False) -> Path:
    """The bundle of ``path`` (a run or a study folder under ``root``), built once per version of what it holds (each
    file's name, size and time) and shared by every download: 40 downloads of one run made 40 full temporary copies
    (945 MB for a 24 MB run). ``housekeeping`` removes bundles nobody asked for within an hour."""
    manifest, contents = _contents(path, root, resumable)
    seen = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in contents]
    key = hashlib.sha256(json.dumps([manifest, seen], sort_keys=True, default=str).encode()).hexdigest()[:24]
    folder = root / CACHE
    if folder.is_symlink():
        raise BundleError(f"{folder} is a symbolic link; refused")
    try:
        folder.mkdir(exist_ok=True)
    except OSError:  # a read-only checkpoints folder (a public demo): the system's temporary folder holds them
        folder = Path(tempfile.gettempdir()) / "effnet-bundles" / hashlib.sha256(str(root).encode()).hexdigest()[:12]
        folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{key}.zip"
    with locks.exclusive(folder / f"{key}.lock"):  # many clicks at once: one builds, the others wait and share it
        if not out.is_file():
            export(path, out, root, resumable)
        os.utime(out)  # asked for now: kept another hour
    return out


def tidy_cache(root: Path, age_s: float) -> list[str]:
    """Remove cached bundles (and their locks) nobody asked for within ``age_s``; a download still reading one keeps
    its open file."""
    folder, done = root / CACHE, []
    if not folder.is_dir() or folder.is_symlink():
        return done
    for path in folder.iterdir():
        lock = folder / f"{path.stem}.lock"
        if path.suffix == ".zip" and time.time() - path.stat().st_mtime > age_s and not locks.is_held(lock):
            path.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            done.append(f"removed the cached bundle {path.name}")
    return done


def export_size(path: str | os.PathLike | list[Path], root: str | os.PathLike | None = None, resumable: bool = False) -> int:
    """About how many bytes the bundle of ``path`` will have (its files' sizes: weights are stored as they are)."""
    return sum(f.stat().st_size for f, _ in _contents(_paths(path), root, resumable)[1])


def _paths(path: str | os.PathLike | list[Any]) -> Path | list[Path]:
    return [Path(p) for p in path] if isinstance(path, list | tuple) else Path(path)


def export(path: str | os.PathLike | list[Any], out: str | os.PathLike, root: str | os.PathLike | None = None,
           resumable: bool = False) -> Path:
    """Write the run folder or study folder ``path`` (or a list of run folders) as the bundle ``out``
    (atomically); returns ``out``.

    Owners stay behind (importing makes the importer the owner); ``resumable`` also carries last.pt.
    """
    path, out = _paths(path), Path(out)
    manifest, contents = _contents(path, root, resumable)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for f, name in contents:
                if f.name == runs.JOB:
                    zf.writestr(f"runs/{name}/{f.name}", _without_owner(f))
                else:
                    _copy_into(zf, f, f"runs/{name}/{f.name}")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- import: the checks
def _member_limit(name: str) -> int:
    return MAX_CHECKPOINT_BYTES if name.endswith(".pt") else files.MAX_JSON_BYTES


def _check_members(zf: zipfile.ZipFile) -> dict[str, list[str]]:
    """``{run name: [file names]}`` when every member is safe and one the layout allows; ``BundleError`` otherwise."""
    found: dict[str, list[str]] = {}
    names = set()
    try:
        members = check_zip(zf, MAX_MEMBERS, _member_limit, MAX_BUNDLE_BYTES)
    except UnsafeZip as exc:
        raise BundleError(str(exc)) from exc
    for info in members:
        names.add(info.filename)
        if info.filename == MANIFEST:
            continue
        parts = info.filename.split("/")
        if len(parts) != 3 or parts[0] != "runs" or not runs.RUN_ID.fullmatch(parts[1]) or parts[2] not in FILES:
            raise BundleError(f"{info.filename!r} is not a file a bundle holds (runs/<run>/<one of {', '.join(FILES)}>)")
        found.setdefault(parts[1], []).append(parts[2])
    if MANIFEST not in names:
        raise BundleError(f"it has no {MANIFEST}: not an effnet-lab bundle")
    return found


def _manifest(zf: zipfile.ZipFile, found: dict[str, list[str]]) -> dict[str, Any]:
    try:
        data = files.loads(_read_member(zf, zf.getinfo(MANIFEST)))
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} is not valid JSON ({exc})") from exc
    try:
        manifest = schemas.parse(schemas.Manifest, data, MANIFEST)
    except files.Damaged as exc:
        raise BundleError(str(exc)) from exc
    names = manifest.runs
    if sorted(names) != sorted(found) or len(set(names)) != len(names):
        raise BundleError(f"{MANIFEST}: its run list does not match the runs in the bundle")
    for name in names:
        if runs.CONFIG not in found[name] and runs.JOB not in found[name]:
            raise BundleError(f"run {name} has neither {runs.CONFIG} nor {runs.JOB}")
    if manifest.kind == "study":
        if manifest.study is None:
            raise BundleError(f"{MANIFEST}: a study bundle needs its study (kind and runs)")
        for row in data["study"]["runs"]:
            try:
                row = study.check_row(row, manifest.study.kind)
            except study.StudyError as exc:
                raise BundleError(str(exc)) from exc
            if row["run"] not in names:
                raise BundleError(f"{MANIFEST}: the study names a run the bundle lacks: {row['run']!r}")
    return data


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as f:
        data = f.read(_member_limit(info.filename) + 1)
    if len(data) > _member_limit(info.filename):
        raise BundleError(f"{info.filename!r} unpacks to more than the {_member_limit(info.filename):,} bytes allowed")
    return data


def _extract(zf: zipfile.ZipFile, into: Path) -> None:
    """Every run file under ``into`` (``into/<run>/<file>``)."""
    for info in zf.infolist():
        if not info.filename.endswith("/") and info.filename != MANIFEST:
            extract_member(zf, info, into.joinpath(*info.filename.split("/")[1:]))


def _check_run(run_dir: Path) -> None:
    """Everything a page will read from the run: its files through the validating readers, its checkpoints
    loaded (weights only) into the spec its config declares."""
    info = runs.read_run(run_dir)
    if info.damaged:
        raise BundleError(f"run {run_dir.name}: {info.error}")
    if info.state not in runs.ENDED:
        raise BundleError(f"run {run_dir.name}: its state is {info.state!r}; only ended runs travel")
    try:
        runs.load_metrics(run_dir)
        load_confusion(run_dir)
    except (files.Damaged, ValueError) as exc:
        raise BundleError(f"run {run_dir.name}: {exc}") from exc
    for name in CHECKPOINTS:
        if not (run_dir / name).exists():
            continue
        try:
            _, spec = runs.load_model(run_dir, run_dir / name)
        except CheckpointError as exc:
            raise BundleError(f"run {run_dir.name}: {exc}") from exc
        if info.spec is not None and spec != info.spec:
            raise BundleError(f"run {run_dir.name}: {name} holds {spec.name}, but the run declares {info.spec.name}")


# ----------------------------------------------------------------------------- import: the writes
@dataclass(frozen=True)
class Imported:
    runs: list[Path]
    study: Path | None


IMPORTED = " · imported"
STAGING, PLAN = access.IMPORTING, "plan.json"  # ".import-": work in flight (access.IN_FLIGHT)
IMPORTS_LOCK = ".imports.lock"  # held while an import names its runs, checks the quota again and moves them in


def _own(run_dir: Path, caller: Caller | None, batch: str) -> None:
    """The imported run belongs to whoever imported it (never to the owner it had elsewhere), says it was imported,
    and forgets the other machine's data folder. A run started there from the command line gets a job.json here,
    so it has an owner (and, with last.pt, can be resumed through the queue)."""
    # Who stopped it or asked Slurm to stop it there means nothing here (a crafted bundle blamed the teacher).
    job = {k: v for k, v in (files.load_json(run_dir / runs.JOB) or {}).items()
           if k not in ("stopped_by_teacher", "stop_requested")}
    info = runs.read_run(run_dir)
    config = (job.get("config") or info.config.to_dict()) | {"data_dir": None}
    base = info.label[: 80 - len(IMPORTED)].rstrip()
    label = base if base.endswith(IMPORTED.strip(" ·")) else schemas.clean_label(base + IMPORTED)
    files.write_json(run_dir / runs.JOB, {**job, "config": config, "label": label, "queued_at": job.get("queued_at", 0),
                                          "generation": job.get("generation", 1), "imported": batch,
                                          "owner": caller.owner if caller else None})
    (run_dir / runs.LABEL).unlink(missing_ok=True)  # the one label is job.json's now


def _names(staging: Path, root: Path, names: list[str]) -> dict[str, str]:
    """A name under ``root`` for each staged run: its own, or a new one when that is taken (never overwrite)."""
    taken, plan = {d.name for d in root.iterdir()} | runs.RESERVED, {}
    for name in names:
        new = name
        while new in taken:
            new = f"{name[:110]}-{secrets.token_hex(3)}"
        taken.add(new)
        plan[name] = new
    return plan


def _finish(staging: Path, root: Path) -> Imported:
    """Move the checked runs of ``staging`` into ``root`` as ``plan.json`` says, then the study; safe to call again
    after a crash (what was moved is not moved twice), which is how an interrupted import completes."""
    plan = files.load_json(staging / PLAN)
    placed = {}
    for name, new in plan["runs"].items():
        if (staging / name).is_dir():
            while (root / new).exists() or (root / new).is_symlink():  # taken while a crashed import waited
                new = f"{name[:110]}-{secrets.token_hex(3)}"
            os.rename(staging / name, root / new)  # one rename per run: each appears complete or not at all
        placed[name] = root / new
    where = None
    if plan.get("study") is not None:
        data = plan["study"]
        where = root / study.STUDIES / plan["study_dir"]
        where.mkdir(parents=True, exist_ok=True)
        rows = [row | {"run": os.path.relpath(placed[row["run"]], where)} for row in data["runs"]]
        files.write_json(where / study.STUDY, data | {"runs": rows})
    shutil.rmtree(staging, ignore_errors=True)
    return Imported(list(placed.values()), where)


def _check_quota(caller: Caller | None, root: Path, adding: int, size: int, fresh: bool = False) -> None:
    def held() -> int:
        return sum(1 for r in runs.list_runs(root) if caller.counts(r.owner) and (r.job or {}).get("imported"))

    try:
        access.check_imports(caller, adding, held, size, root, fresh)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc


def import_bundle(bundle: str | os.PathLike | Any, root: str | os.PathLike | None = None,
                  caller: Caller | None = None) -> Imported:
    """Check the bundle (a path or a binary file object) completely, then add its runs (and study) to ``root``.

    ``BundleError`` saying why when it is refused; nothing is written then. The bundle is unpacked into a hidden
    staging folder of ``root`` (held by a lock while it works); a crash leaves that folder, which the next
    ``recover`` finishes (when every check had passed) or removes.
    """
    root = runs.checkpoints_dir(root)
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"not a zip file ({exc})") from exc
    with zf:
        found = _check_members(zf)
        manifest = _manifest(zf, found)
        size = sum(i.file_size for i in zf.infolist())
        _check_quota(caller, root, len(manifest["runs"]), size)
        root.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(root).free < 2 * size:
            raise BundleError("there is not enough free disk space here to check it")
        batch = secrets.token_hex(6)
        staging = root / f"{STAGING}{batch}"
        with locks.exclusive(root / f"{STAGING}{batch}.lock"):
            try:
                staging.mkdir()
                _stage(zf, manifest, staging, caller, batch)
                with locks.exclusive(root / IMPORTS_LOCK):  # names, quota and moves: one import at a time
                    _check_quota(caller, root, len(manifest["runs"]), size, fresh=True)  # again, counted now
                    _plan(staging, manifest)
                    return _finish(staging, root)
            except BaseException:
                if not (staging / PLAN).is_file():
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                (root / f"{STAGING}{batch}.lock").unlink(missing_ok=True)


def _stage(zf: zipfile.ZipFile, manifest: dict[str, Any], staging: Path, caller: Caller | None, batch: str) -> None:
    """Unpack and check every run in ``staging`` and make each the importer's (slow, so outside the imports lock)."""
    try:
        _extract(zf, staging)
    except UnsafeZip as exc:
        raise BundleError(str(exc)) from exc
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BundleError(f"it is damaged ({exc})") from exc
    for name in manifest["runs"]:
        _check_run(staging / name)
    for name in manifest["runs"]:
        _own(staging / name, caller, batch)


def _plan(staging: Path, manifest: dict[str, Any]) -> None:
    """Name the staged runs (and the study) under the root and write ``plan.json``: the commit point."""
    root = staging.parent
    plan = {"runs": _names(staging, root, manifest["runs"]), "study": manifest.get("study")}
    if plan["study"] is not None:
        plan["study_dir"] = study.new_study_dir(root, f"imported-{plan['study']['kind']}").name
    files.write_json(staging / PLAN, plan)


def recover(root: str | os.PathLike | None = None) -> list[str]:
    """Imports a crash interrupted: finished when their checks had all passed (``plan.json``), else removed; returns
    what was done. An import still at work holds its lock and is left alone."""
    root = runs.checkpoints_dir(root)
    done = []
    for staging in sorted(root.glob(f"{STAGING}*")) if root.is_dir() else []:
        if not staging.is_dir() or staging.is_symlink() or locks.is_held(root / f"{staging.name}.lock"):
            continue
        if (staging / PLAN).is_file():
            with locks.exclusive(root / IMPORTS_LOCK):
                _finish(staging, root)
            done.append(f"finished the interrupted import {staging.name}")
        else:
            shutil.rmtree(staging, ignore_errors=True)
            done.append(f"removed the interrupted import {staging.name}")
        (root / f"{staging.name}.lock").unlink(missing_ok=True)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.bundle", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    out = verbs.add_parser("export", help="a run folder, several, or a study folder as one zip")
    out.add_argument("path", nargs="+", help="a run folder (or several), or a study folder (with study.json)")
    out.add_argument("bundle", help="the zip to write")
    out.add_argument("--checkpoints", help="where a study's runs are (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    out.add_argument("--resumable", action="store_true",
                     help="also carry last.pt (the optimizer state: about 3x the size), so the runs can train on")
    into = verbs.add_parser("import", help="add a bundle's runs (and study) to this install")
    into.add_argument("bundle")
    into.add_argument("--checkpoints", help="default: $EFFNET_CHECKPOINTS or ./checkpoints")
    args = p.parse_args(argv)
    if not args.bundle.strip() or Path(args.bundle).is_dir():
        p.error(f"bundle: give the zip's file name, e.g. my-run.zip (got {args.bundle!r})")
    try:
        if args.verb == "export":
            print(export(args.path, args.bundle, args.checkpoints, resumable=args.resumable))
            return 0
        done = import_bundle(args.bundle, args.checkpoints)
    except (BundleError, OSError) as exc:
        print(f"refused: {args.bundle}: {exc}", file=sys.stderr)
        return 1
    for run_dir in done.runs:
        print(run_dir)
    if done.study is not None:
        print(f"study: {done.study}", file=sys.stderr)
    return 0

