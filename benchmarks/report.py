"""Results, the machine and versions they were measured on, and BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import MIB

NUMBERS = {"conversion": "1", "streaming": "2", "end_to_end": "3"}  # as in issue 9, whatever ran


@dataclass
class Target:
    what: str
    value: str
    met: bool | None  # None: not measured

    def mark(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Section:
    key: str
    title: str
    baseline: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_run: str = ""  # why the section could not run (empty: it ran)

    def table(self) -> list[str]:
        if not self.rows:
            return []
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return lines


@dataclass
class RunInfo:
    runs: int
    quick: bool
    started: datetime.datetime
    finished: datetime.datetime | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    command: str = ""


def mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


# --------------------------------------------------------------------------- machine, versions


def _first(path: str, key: str) -> str:
    with contextlib.suppress(OSError), open(path) as handle:
        for line in handle:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict[str, str]:
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    os_name = "unknown"
    with contextlib.suppress(OSError), open("/etc/os-release") as handle:
        for line in handle:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return {
        "CPU": _first("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "memory": f"{int(mem_kib) / 1024**2:.1f} GiB" if mem_kib.isdigit() else mem_kib,
        "OS": f"{os_name}, Linux {platform.release()}",
    }


def _cmd(args: list[str]) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return result.stdout.strip() or "not installed"


def _dpkg(package: str) -> str:
    return _cmd(["dpkg-query", "-W", "-f=${Version}", package])


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(mongo_uri: str | None = None) -> dict[str, str]:
    found = {"Python": platform.python_version()}
    try:
        import av

        found["PyAV"] = f"{av.__version__} (FFmpeg {getattr(av, 'ffmpeg_version_info', '?')})"
    except ImportError:
        found["PyAV"] = "not installed"
    found["lameenc"] = _pkg("lameenc")
    ffmpeg_line = _cmd(["ffmpeg", "-hide_banner", "-version"]).splitlines()[:1]
    found["Debian ffmpeg"] = f"{_dpkg('ffmpeg')} ({ffmpeg_line[0] if ffmpeg_line else '?'})"
    found["RabbitMQ"] = _dpkg("rabbitmq-server")
    found["MariaDB"] = _dpkg("mariadb-server")
    found["MongoDB-compatible server"] = _mongo_version(mongo_uri)
    found["pymongo"] = _pkg("pymongo")
    found["grpcio"] = _pkg("grpcio")
    found["gunicorn"] = _pkg("gunicorn")
    return found


def _mongo_version(uri: str | None) -> str:
    uri = uri or os.environ.get("MONGO_URI") or "mongodb://127.0.0.1:27017/"
    try:
        import pymongo

        client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000)
        try:
            info = client.admin.command("buildInfo")
        finally:
            client.close()
    except Exception as error:  # noqa: BLE001 - a version line is informative, never fatal
        return f"unreachable ({type(error).__name__})"
    wire = f"MongoDB {info.get('version', '?')} protocol"
    if "ferretdbVersion" not in info:
        return wire
    ferret = str(info["ferretdbVersion"])
    if ferret == "unknown":  # the embedded build (dev/ferretdb) does not stamp it: read its go.mod
        ferret = _ferretdb_module_version()
    return f"FerretDB {ferret}, embedded, SQLite ({wire})"


def _ferretdb_module_version() -> str:
    go_mod = Path(__file__).resolve().parent.parent / "dev/ferretdb/go.mod"
    with contextlib.suppress(OSError):
        for line in go_mod.read_text().splitlines():
            if line.startswith("require github.com/FerretDB/FerretDB "):
                return line.split()[-1]
    return "unknown"


# --------------------------------------------------------------------------- rendering


def render(
    sections: list[Section], info: RunInfo, machine_info: dict[str, str], versions_info: dict[str, str]
) -> str:
    started = info.started.strftime("%Y-%m-%d %H:%M UTC")
    took = (info.finished - info.started).total_seconds() / 60 if info.finished else 0.0
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks`); do not edit by hand. Every figure is a ratio",
        "against a baseline measured in the same invocation on the same inputs; each measurement was run",
        f"{info.runs} time(s) and the median is quoted. Inputs are generated with Debian's ffmpeg (lavfi",
        "`testsrc2` picture + `sine` tone, H.264 ultrafast + AAC) and cached outside the repository.",
        "",
    ]
    if info.quick:
        lines += [
            "> **Quick run**: seconds-long inputs and small files, for checking the tool only.",
            "> These figures say nothing about performance; run `make bench` for real ones.",
            "",
        ]
    lines += [
        f"- Date: {started} ({took:.1f} min)",
        f"- Command: `{info.command}`",
        f"- Load average (1/5/15 min) before the run: {' / '.join(f'{x:.2f}' for x in info.load_before)}; "
        f"after: {' / '.join(f'{x:.2f}' for x in info.load_after)}",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in {**machine_info, **versions_info}.items()]
    lines += ["", "## Targets", "", "| section | target | measured | |", "|---|---|---|---|"]
    for section in sections:
        if section.not_run:
            lines.append(f"| {section.title} | (all) | not run | {section.not_run} |")
        for target in section.targets:
            lines.append(f"| {section.title} | {target.what} | {target.value} | {target.mark()} |")
    for section in sections:
        number = NUMBERS.get(section.key, "")
        lines += [
            "",
            f"## {number}. {section.title}" if number else f"## {section.title}",
            "",
            f"Baseline: {section.baseline}",
            "",
        ]
        if section.not_run:
            lines += [f"**Not run**: {section.not_run}", ""]
        table = section.table()
        if table:
            lines += [*table, ""]
        lines += [f"- {note}" for note in section.notes]
    return "\n".join(lines).rstrip() + "\n"


def write(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    part.replace(path)
