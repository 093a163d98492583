"""``python -m effnet.runs``: carry runs between installs as bundles.

    python -m effnet.runs export checkpoints/<run> b0.zip         # a run
    python -m effnet.runs export checkpoints/studies/<study> s.zip # a study and all its runs
    python -m effnet.runs import b0.zip [--checkpoints DIR]        # prints the new run folder(s)

A refused bundle exits non-zero with the reason on stderr and writes nothing.
"""

from __future__ import annotations

import argparse
import sys

from effnet.bundle import BundleError, export, import_bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m effnet.runs", description=__doc__.split("\n\n")[0])
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
