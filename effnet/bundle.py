"""Run bundles: a run, or a study with its runs, as one zip that opens on another install.

    python -m effnet.bundle export checkpoints/<run> b0.zip         # a run
    python -m effnet.bundle export checkpoints/studies/<study> s.zip # a study and all its runs
    python -m effnet.bundle import b0.zip [--checkpoints DIR]        # prints the new run folder(s)

(``python -m effnet.runs export|import`` is the same command under its older name.) A refused bundle
exits non-zero with the reason on stderr and writes nothing.

Training CIFAR-100 takes a GPU for hours; the class sees the results on a laptop. A bundle carries
what the pages read and nothing else:

    bundle.json             {"format": 1, "kind": "run" | "study", "runs": [names], "study": {...}?}
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
import json
import os
import secrets
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet import files, runs, study
from effnet.access import Caller
from effnet.checkpoint import CheckpointError
from effnet.results import load_confusion
from effnet.safezip import CHUNK, UnsafeZip, check_zip, extract_member

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
def _run_files(run_dir: Path) -> list[Path]:
    info = runs.read_run(run_dir)
    if info.damaged:
        raise BundleError(f"{run_dir.name} is {info.error}; it cannot be exported")
    if info.state not in runs.ENDED:
        raise BundleError(f"{run_dir.name} is {info.state}; export it once it has finished or been stopped")
    return [run_dir / f for f in FILES if (run_dir / f).is_file() and not (run_dir / f).is_symlink()]


def _copy_into(zf: zipfile.ZipFile, path: Path, name: str) -> None:
    """A run file into the zip, opened without following links (a file swapped for a link is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc})") from exc
    member = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_STORED if path.suffix == ".pt" else zipfile.ZIP_DEFLATED  # weights: no gain
    with os.fdopen(fd, "rb") as src, zf.open(member, "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def export(path: str | os.PathLike, out: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write the run folder or study folder ``path`` as the bundle ``out`` (atomically); returns ``out``."""
    path, out = Path(path), Path(out)
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
    files = [(f, folder.name) for folder in folders for f in _run_files(folder)]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for f, name in files:
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
        manifest = json.loads(_read_member(zf, zf.getinfo(MANIFEST)))
    except ValueError as exc:
        raise BundleError(f"{MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("kind") not in ("run", "study"):
        raise BundleError(f"{MANIFEST}: expected format {FORMAT} and kind run or study")
    names = manifest.get("runs")
    if not isinstance(names, list) or not names or sorted(names) != sorted(found) or len(set(names)) != len(names):
        raise BundleError(f"{MANIFEST}: its run list does not match the runs in the bundle")
    for name in names:
        if runs.CONFIG not in found[name] and runs.JOB not in found[name]:
            raise BundleError(f"run {name} has neither {runs.CONFIG} nor {runs.JOB}")
    if manifest["kind"] == "study":
        data = manifest.get("study")
        if not isinstance(data, dict) or data.get("kind") not in study.KINDS or not isinstance(data.get("runs"), list):
            raise BundleError(f"{MANIFEST}: a study bundle needs its study (kind and runs)")
        for row in data["runs"]:
            try:
                row = study.check_row(row, data["kind"])
            except study.StudyError as exc:
                raise BundleError(str(exc)) from exc
            if row["run"] not in names:
                raise BundleError(f"{MANIFEST}: the study names a run the bundle lacks: {row['run']!r}")
    return manifest


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


def _own(run_dir: Path, caller: Caller | None) -> None:
    """The imported run belongs to whoever imported it; the other machine's data folder means nothing here."""
    job = files.load_json(run_dir / runs.JOB)  # checked by read_run already; raw, to write it back
    if job is None:
        return
    config = job["config"] | {"data_dir": None}
    files.write_json(run_dir / runs.JOB, job | {"config": config, "owner": caller.owner if caller else None})


def _place(staged: Path, root: Path) -> Path:
    """Move a checked run into ``root`` under its own name, or a new one when that is taken."""
    name = staged.name
    while (root / name).exists() or (root / name).is_symlink():
        name = f"{staged.name[:110]}-{secrets.token_hex(3)}"
    landing = root / f".import-{secrets.token_hex(6)}"
    shutil.copytree(staged, landing)
    try:
        os.rename(landing, root / name)
    except OSError:
        shutil.rmtree(landing, ignore_errors=True)
        raise
    return root / name


def import_bundle(bundle: str | os.PathLike | Any, root: str | os.PathLike | None = None,
                  caller: Caller | None = None) -> Imported:
    """Check the bundle (a path or a binary file object) completely, then add its runs (and study) to ``root``.

    ``BundleError`` saying why when it is refused; nothing is written then.
    """
    root = runs.checkpoints_dir(root)
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"not a zip file ({exc})") from exc
    with zf, tempfile.TemporaryDirectory(prefix="effnet-import-") as tmp:
        found = _check_members(zf)
        manifest = _manifest(zf, found)
        if shutil.disk_usage(Path(tmp)).free < sum(i.file_size for i in zf.infolist()):
            raise BundleError("there is not enough free disk space here to check it")
        try:
            _extract(zf, Path(tmp))
        except UnsafeZip as exc:
            raise BundleError(str(exc)) from exc
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise BundleError(f"it is damaged ({exc})") from exc
        for name in manifest["runs"]:
            _check_run(Path(tmp) / name)
        root.mkdir(parents=True, exist_ok=True)
        placed = {}
        for name in manifest["runs"]:
            _own(Path(tmp) / name, caller)
            placed[name] = _place(Path(tmp) / name, root)
    return Imported(list(placed.values()), _place_study(manifest, placed, root))


def _place_study(manifest: dict[str, Any], placed: dict[str, Path], root: Path) -> Path | None:
    if manifest["kind"] != "study":
        return None
    data = manifest["study"]
    where = study.new_study_dir(root, f"imported-{data['kind']}")
    where.mkdir(parents=True)
    rows = [row | {"run": os.path.relpath(placed[row["run"]], where)} for row in data["runs"]]
    files.write_json(where / study.STUDY, data | {"runs": rows})
    return where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.bundle", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    out = verbs.add_parser("export", help="a run folder or a study folder as one zip")
    out.add_argument("path", help="a run folder, or a study folder (with study.json)")
    out.add_argument("bundle", help="the zip to write")
    out.add_argument("--checkpoints", help="where a study's runs are (default: $EFFNET_CHECKPOINTS or ./checkpoints)")
    into = verbs.add_parser("import", help="add a bundle's runs (and study) to this install")
    into.add_argument("bundle")
    into.add_argument("--checkpoints", help="default: $EFFNET_CHECKPOINTS or ./checkpoints")
    args = p.parse_args(argv)
    try:
        if args.verb == "export":
            print(export(args.path, args.bundle, args.checkpoints))
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


if __name__ == "__main__":
    sys.exit(main())
