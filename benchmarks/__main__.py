"""``python -m benchmarks [--quick] [--runs N] [--only conversion,streaming,end_to_end]``.

Progress goes to stderr; the results are printed on stdout and written to BENCHMARKS.md
(a quick run writes only where ``--output`` says: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import media, report
from benchmarks.measure import Progress
from benchmarks.report import Section

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("conversion", "streaming", "end_to_end")
TITLES = {"conversion": "Conversion", "streaming": "Streaming memory", "end_to_end": "End-to-end throughput"}


def _runner(name: str) -> Callable[..., Section]:
    """A section's ``run``, imported only when asked for (sections 2-3 need the services' code)."""
    module = importlib.import_module(f"benchmarks.{name}")
    run: Callable[..., Section] = module.run
    return run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long inputs, one run: checks the tool")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3; quick: 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--prepare", action="store_true", help="only generate the inputs (cached), then stop")
    parser.add_argument("--cache-dir", type=Path, default=media.DEFAULT_CACHE, help="generated inputs")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Markdown file to write (default BENCHMARKS.md; quick: none)",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip().replace("-", "_") for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.output is None and not args.quick:
        args.output = ROOT / "BENCHMARKS.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    progress = Progress()
    info = report.RunInfo(
        runs=args.runs,
        quick=args.quick,
        started=datetime.datetime.now(datetime.UTC),
        load_before=os.getloadavg(),
        command="python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    if info.load_before[0] > (os.cpu_count() or 1) * 0.5 and not args.quick:
        progress.note(
            f"warning: load average {info.load_before[0]:.2f} on {os.cpu_count()} cores — other work is "
            "running; the figures will be noisy"
        )
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    progress.note(f"inputs in {args.cache_dir}; {args.runs} run(s) each; sections: {', '.join(args.only)}")
    if args.prepare:
        for name in args.only:
            module = importlib.import_module(f"benchmarks.{name}")
            paths = module.prepare(quick=args.quick, cache=args.cache_dir, progress=progress)
            total = sum(path.stat().st_size for path in paths)
            progress.note(f"{name}: {len(paths)} input(s), {total / 2**20:.0f} MiB in {args.cache_dir}")
        return 0
    sections: list[Section] = []
    failed = False
    for name in args.only:
        try:
            run = _runner(name)
            sections.append(run(runs=args.runs, quick=args.quick, cache=args.cache_dir, progress=progress))
        except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
            failed = True
            progress.note(f"{name} failed: {error!r}")
            traceback.print_exc(file=sys.stderr)
            sections.append(Section(key=name, title=TITLES[name], baseline="—", not_run=f"failed: {error}"))
    info.finished = datetime.datetime.now(datetime.UTC)
    info.load_after = os.getloadavg()
    text = report.render(sections, info, report.machine(), report.versions())
    print(text)
    if args.output is not None:
        report.write(args.output, text)
        progress.note(f"written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
