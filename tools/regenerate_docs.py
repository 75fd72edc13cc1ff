#!/usr/bin/env python
"""Regenerate every CPU-measurable file under ``docs/`` (tables, CSVs, plots, pictures),
one tool after another, each with the command its page shows (``benchmarks.docs_regen``):

    python tools/regenerate_docs.py              # all steps: about 11-30 hours on a 2-core CPU
    python tools/regenerate_docs.py --list       # the steps, their commands and times
    python tools/regenerate_docs.py --only efficientdet_size main_job

Finished trainings are reused (the neck study's rule), so an interrupted run resumes. A
step that fails leaves its docs files as they were; the exit status is 1 if any failed.
"""
import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: the lab, benchmarks/

from benchmarks.docs_regen import STEPS, run_steps, step_command  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="print the steps and exit")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run these steps only")
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"), help="where the files go (default: docs/)")
    args = parser.parse_args(argv)
    names = [s.name for s in STEPS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; steps: {names}")
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    if args.list:
        for s in steps:
            targets = ", ".join(s.copies.values()) or "(writes into docs/ itself)"
            print(f"{s.name}  [{s.minutes[0]}-{s.minutes[1]} min] -> {targets}\n    "
                  + shlex.join(step_command(s, Path(args.docs_dir))))
        return 0
    failed = run_steps(steps, ROOT, Path(args.docs_dir), say=lambda m: print(f"[docs] {m}", flush=True))
    if failed:
        print(f"[docs] failed: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
