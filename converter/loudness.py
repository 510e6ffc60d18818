"""EBU R128 loudness normalisation in two streaming passes: ``measure`` decodes the sound
once through FFmpeg's ``ebur128`` filter (integrated loudness, true peak); ``Gain`` is
then applied frame by frame while the sound is encoded (``volume``, and ``alimiter`` when
the gain would push the true peak above the ceiling). Neither holds more than a frame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import av.error
import av.filter

log = logging.getLogger("converter.loudness")

TARGET_LUFS = -16.0
TRUE_PEAK_DBTP = -1.5
LIMIT_DBFS = -2.0  # the limiter's ceiling (sample peak), under the true-peak target
SILENCE_LUFS = -70.0  # ebur128's integrated loudness of silence: no gain is applied


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    true_peak_dbtp: float


@dataclass(frozen=True)
class Gain:
    db: float
    limit: bool  # a limiter keeps the peaks under the ceiling

    @classmethod
    def to_target(cls, measured: Loudness) -> Gain | None:
        if measured.integrated_lufs <= SILENCE_LUFS:
            return None
        db = TARGET_LUFS - measured.integrated_lufs
        return cls(db=db, limit=measured.true_peak_dbtp + db > TRUE_PEAK_DBTP)


def _drain(graph: av.filter.Graph) -> Iterator[av.AudioFrame]:
    while True:
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return
        assert isinstance(frame, av.AudioFrame)
        yield frame


def _graph(first: av.AudioFrame, filters: list[tuple[str, str]]) -> av.filter.Graph:
    graph = av.filter.Graph()
    node = graph.add_abuffer(
        format=first.format.name,
        sample_rate=first.sample_rate,
        layout=first.layout.name,
        time_base=first.time_base,
    )
    for name, args in filters:
        nxt = graph.add(name, args)
        node.link_to(nxt)
        node = nxt
    node.link_to(graph.add("abuffersink"))
    graph.configure()
    return graph


def window(frames: Iterator[av.AudioFrame], start: float, end: float | None) -> Iterator[av.AudioFrame]:
    """Whole frames overlapping [start, end) (for measuring; the encoder cuts exactly)."""
    for frame in frames:
        begin = frame.time
        if begin is not None and end is not None and begin >= end:
            return
        if begin is not None and begin + frame.samples / frame.sample_rate <= start:
            continue
        yield frame


def measure(frames: Iterable[av.AudioFrame]) -> Loudness:
    """Integrated loudness and true peak of the sound, frame by frame."""
    graph: av.filter.Graph | None = None
    integrated, peak = SILENCE_LUFS, 0.0

    def read(frame: av.AudioFrame) -> None:
        nonlocal integrated, peak
        meta = frame.metadata
        if "lavfi.r128.I" in meta:
            integrated = float(meta["lavfi.r128.I"])
        if "lavfi.r128.true_peak" in meta:
            peak = max(peak, float(meta["lavfi.r128.true_peak"]))

    for frame in frames:
        if graph is None:
            graph = _graph(frame, [("ebur128", "metadata=1:peak=true")])
        graph.push(frame)
        for out in _drain(graph):
            read(out)
    if graph is not None:
        graph.push(None)
        for out in _drain(graph):
            read(out)
    peak_db = 20 * math.log10(peak) if peak > 0 else -120.0
    log.debug("loudness measured", extra={"integrated_lufs": integrated, "true_peak_dbtp": peak_db})
    return Loudness(integrated, peak_db)


def apply(frames: Iterable[av.AudioFrame], gain: Gain) -> Iterator[av.AudioFrame]:
    """The frames with ``gain`` applied (and limited, if it says so)."""
    graph: av.filter.Graph | None = None
    for frame in frames:
        if graph is None:
            filters = [("volume", f"volume={gain.db:.3f}dB:precision=float")]
            if gain.limit:
                ceiling = 10 ** (LIMIT_DBFS / 20)
                filters.append(("alimiter", f"limit={ceiling:.4f}:level=false:attack=5:release=50"))
            graph = _graph(frame, filters)
        graph.push(frame)
        yield from _drain(graph)
    if graph is not None:
        graph.push(None)
        yield from _drain(graph)
