"""MP3 encoding on several cores: the sound is cut into segments that LAME encoders encode
at the same time, and their MP3 frames are joined back into one stream that decodes like
the output of a single encoder.

LAME is the slow part of a conversion and runs on one core. A fresh encoder started at a
frame boundary (1152 samples) produces frames that line up with those of an encoder that
has been running since the start: frame ``i`` of an encoder whose input begins at frame
``f`` covers the same samples as frame ``f + i`` of the other. So each segment is encoded
with a few frames of the sound before it (``preroll``: the encoder's filter bank and
psychoacoustic model warm up on them) and a few after it (``candidates`` + ``lookahead``),
and two neighbours are joined at a frame ``j`` of their overlap, chosen so that:

- the later segment's frame ``j`` finds its bit-reservoir bytes: they are copied over the
  reservoir bytes the earlier segment had set aside for its own frame ``j`` (which are
  no longer used), so the later frame must need no more than the earlier one kept;
- the transform windows fit across the join (see ``mp3frames.windows_fit``).

Encoders usually converge within a few dozen frames, after which their frames decode to
exactly the same samples; a join there is then exact. When no frame of the overlap has
room enough, the earlier segment's last frame before the join is given a higher bit rate
for that one frame (more room at its end, which nothing else refers to).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from converter import mp3frames
from converter.mp3frames import Frame

log = logging.getLogger("converter.segments")

PREROLL = 8  # frames encoded before a segment's first frame, then dropped
CANDIDATES = 16  # frames after a boundary where the join may be made
LOOKAHEAD = 3  # frames past the last candidate, so the candidates are not the encoder's last
MAX_SEGMENT = 512  # frames (about 11-16 s): bounds the PCM held in memory
MIN_SEGMENT = 192  # frames (about 4-6 s): shorter sound is one segment
ENCODE_PIECE = 64 * 1152 * 2  # bytes of PCM given to LAME per call (whole samples, mono or stereo)


class PcmEncoder(Protocol):
    def encode_pcm(self, pcm: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def segment_frames(expected_frames: int | None, threads: int) -> int:
    """Segment length: whole segments a multiple of ``threads``, so no core idles at the end."""
    if not expected_frames or expected_frames <= 0:
        return MAX_SEGMENT
    count = threads * math.ceil(expected_frames / (threads * MAX_SEGMENT))
    return max(MIN_SEGMENT, math.ceil(expected_frames / count))


class Stopped(Exception):
    """The conversion is being abandoned: no more buffers are handed out."""


class BufferPool:
    """A fixed number of PCM buffers, allocated once and reused: the PCM held in memory
    stays at ``count`` segments, and the allocator never has to find room for more."""

    def __init__(self, count: int, size: int, stop: threading.Event) -> None:
        self.size = size
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._unmade = count
        self._lock = threading.Lock()
        self._stop = stop

    def take(self) -> bytearray:
        """A free buffer, waiting for one if all are in use; ``Stopped`` once stop is set."""
        with self._lock:
            if self._unmade and self._free.empty():
                self._unmade -= 1
                return bytearray(self.size)
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        raise Stopped

    def give(self, buffer: bytearray) -> None:
        self._free.put(buffer)


@dataclass
class Segment:
    """One encoder's input: PCM from absolute frame ``first``, the first ``size`` bytes of
    ``buffer``; the segment's own part (after the preroll) starts at frame ``start``."""

    index: int
    first: int
    start: int
    buffer: bytearray
    size: int
    final: bool


@dataclass
class Encoded:
    index: int
    first: int
    start: int
    frames: list[Frame]
    final: bool


@dataclass
class JoinStats:
    joins: int = 0
    exact: int = 0  # the two encoders had converged: the same side information at the join
    grown: int = 0  # a frame's bit rate was raised to make room
    misfit_windows: int = 0  # no candidate had fitting windows (never seen; logged)


def encode_segment(make_encoder: Callable[[], PcmEncoder], segment: Segment) -> Encoded:
    encoder = make_encoder()
    out = bytearray()
    with memoryview(segment.buffer) as pcm:
        # In pieces: LAME copies each call's whole input into float buffers of its own
        # (and lameenc takes only bytes).
        for offset in range(0, segment.size, ENCODE_PIECE):
            out += encoder.encode_pcm(pcm[offset : min(offset + ENCODE_PIECE, segment.size)].tobytes())
    out += encoder.flush()
    return Encoded(segment.index, segment.first, segment.start, mp3frames.split_frames(out), segment.final)


def buffer_bytes(frame_bytes: int, length: int) -> int:
    """Size of a segment's PCM buffer: preroll, the segment, the overlap after it."""
    return (PREROLL + length + CANDIDATES + LOOKAHEAD) * frame_bytes


class Segmenter:
    """Cuts a PCM stream into overlapping segments, ready to encode, in order. Each
    segment's PCM is written into a buffer of ``pool``; the encoder's user gives it back."""

    def __init__(self, frame_bytes: int, length: int, pool: BufferPool) -> None:
        if pool.size < buffer_bytes(frame_bytes, length):
            raise ValueError("the pool's buffers are too small for the segments")
        self.frame_bytes = frame_bytes  # bytes of PCM per MP3 frame (1152 samples, all channels)
        self.length = length
        self.pool = pool
        self._buffer: bytearray | None = None
        self._used = 0
        self._index = 0

    def _bounds(self) -> tuple[int, int, int]:
        start = self._index * self.length
        first = max(0, start - PREROLL)
        end = start + self.length + CANDIDATES + LOOKAHEAD  # exclusive, in frames
        return first, start, end

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[Segment]:
        """Add PCM; the segments it completes, in order (usually none or one). May wait
        for a free buffer."""
        ready: list[Segment] = []
        with memoryview(pcm) as data:
            taken = 0
            while taken < len(data):
                if self._buffer is None:
                    self._buffer, self._used = self.pool.take(), 0
                first, start, end = self._bounds()
                full = (end - first) * self.frame_bytes
                count = min(len(data) - taken, full - self._used)
                self._buffer[self._used : self._used + count] = data[taken : taken + count]
                self._used += count
                taken += count
                if self._used == full:
                    ready.append(Segment(self._index, first, start, self._buffer, full, final=False))
                    self._index += 1
                    # The overlap with the next segment starts its buffer.
                    overlap = (end - self._bounds()[0]) * self.frame_bytes
                    old, self._buffer = self._buffer, self.pool.take()
                    with memoryview(old) as source, memoryview(self._buffer) as target:
                        target[:overlap] = source[full - overlap : full]
                    self._used = overlap
        return ready

    def finish(self) -> Segment:
        """The last segment: everything from its preroll to the end of the sound."""
        if self._buffer is None:
            self._buffer, self._used = self.pool.take(), 0
        first, start, _end = self._bounds()
        segment = Segment(self._index, first, start, self._buffer, self._used, final=True)
        self._buffer = None
        return segment


class Joiner:
    """Takes encoded segments in order and gives back the joined MP3 bytes, as soon as known."""

    def __init__(self) -> None:
        self._held: Encoded | None = None
        self._held_from = 0  # absolute frame: the held segment's first frame not yet given out
        self.stats = JoinStats()

    def add(self, segment: Encoded) -> bytes:
        held = self._held
        if held is None:
            if segment.index != 0:
                raise ValueError("segments must start with the first")
            self._held, self._held_from = segment, 0
        else:
            if segment.index != held.index + 1:
                raise ValueError(f"segment {segment.index} after {held.index}")
            join = self._choose_join(held, segment)
            out = self._take(held, self._held_from, join)
            self._held, self._held_from = segment, join
            if not segment.final:
                return out
            return out + self._take(segment, join, segment.first + len(segment.frames))
        if segment.final:
            return self._take(segment, 0, len(segment.frames))
        return b""

    @staticmethod
    def _take(segment: Encoded, begin: int, end: int) -> bytes:
        frames = segment.frames[begin - segment.first : end - segment.first]
        return b"".join(bytes(frame.data) for frame in frames)

    def _choose_join(self, before: Encoded, after: Encoded) -> int:
        """Pick the join frame in the overlap, make it valid, and return its absolute index."""
        boundary = after.start
        last = min(
            boundary + CANDIDATES, before.first + len(before.frames) - 1, after.first + len(after.frames)
        )
        if last <= boundary or boundary - 1 < self._held_from:
            raise ValueError("segments do not overlap enough to be joined")

        def frame(segment: Encoded, index: int) -> Frame:
            return segment.frames[index - segment.first]

        ranked: list[tuple[int, int]] = []  # (rank, join): lower ranks are better joins
        for join in range(boundary, last):
            x_prev, x, y = frame(before, join - 1), frame(before, join), frame(after, join)
            fits = mp3frames.windows_fit(x_prev, y)
            if (
                fits
                and x.main_data_begin == y.main_data_begin
                and x.data[4 : x.slot_start] == y.data[4 : y.slot_start]
            ):
                ranked.append((0, join))  # converged: the two encoders agree here
                break
            room = y.main_data_begin <= x.main_data_begin
            agree = x.block_types == y.block_types
            ranked.append(((1 if agree else 2) if room else 3, join) if fits else (4 if room else 5, join))
        for rank, join in sorted(ranked):
            if self._make_room(before, after, join):
                self.stats.joins += 1
                self.stats.exact += rank == 0
                if rank >= 4:
                    self.stats.misfit_windows += 1
                    log.warning(
                        "MP3 segments joined where the transform windows do not fit", extra={"frame": join}
                    )
                return join
        raise ValueError(f"MP3 segments {before.index} and {after.index} cannot be joined")

    def _make_room(self, before: Encoded, after: Encoded, join: int) -> bool:
        """Copy the later segment's reservoir bytes for frame ``join`` over the earlier
        segment's, raising the bit rate of the earlier frame before the join if they need
        more room than it kept. False if even 320 kb/s would not make room enough."""
        x_frames = before.frames[: join - before.first]
        y_frames = after.frames[: join - after.first]
        need = after.frames[join - after.first].main_data_begin
        room = before.frames[join - before.first].main_data_begin
        if need > room:
            if not mp3frames.grow_slot(x_frames[-1], need - room):
                return False
            self.stats.grown += 1
        if need:
            tail = mp3frames.reservoir_tail(y_frames, len(y_frames), need)
            mp3frames.overwrite_reservoir_tail(x_frames, len(x_frames), tail)
        return True
