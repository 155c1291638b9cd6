"""Make a resumable calibration run's directory small enough to commit.

Run: ``python benchmarks/slim_run.py DIR [--keep PIECE ...]``

A resumable run (``mscpk fit --state-dir DIR``) saves the full NUTS state (positions,
adaptation state with the dense mass matrix and its square roots per chain, keys) in every
piece, ~0.3 MB each for the 48-dimensional calibration, but continuing reads only the
last piece's (and ``--warm-start`` the one it names). This replaces the state of every
other piece by ``None`` in place (atomically), keeping the draws, sample statistics and
timings, so that ``benchmarks/runs/<run>/`` can live in the repository between sessions.
The last piece and those given with ``--keep`` are left whole.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path


def slim(directory, keep=()) -> list[Path]:
    directory = Path(directory)
    if not (directory / "config.pkl").exists():
        raise ValueError(f"directory: {directory} holds no resumable NUTS run (no config.pkl)")
    keep = {Path(k).resolve() for k in keep}
    pieces = sorted(directory.glob("piece_*.pkl"))
    changed = []
    for path in pieces[:-1]:
        if path.resolve() in keep:
            continue
        with open(path, "rb") as f:
            piece = pickle.load(f)
        if piece.get("state") is None:
            continue
        piece["state"] = None
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(piece, f)
        os.replace(tmp, path)
        changed.append(path)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--keep", action="append", default=[], help="a piece to leave whole (repeatable)")
    args = parser.parse_args(argv)
    changed = slim(args.directory, args.keep)
    print(f"{len(changed)} pieces slimmed in {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
