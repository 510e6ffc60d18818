"""MPEG-1 Layer III frames: just enough of the bit stream to join two encodings of the
same sound seamlessly (``converter.segments``).

An MP3 frame is a 4-byte header, an optional CRC, the side information and a "slot" of
main data. A frame's own main data may begin before its slot, in the slots of the frames
before it (the bit reservoir): ``main_data_begin`` bytes back from the start of its slot.
The side information also says, for each granule (two per frame) and channel, the shape
of the transform window (``block_type``); consecutive granules must have shapes that fit
(long → long or start, start → short, short → short or stop, stop → long or start).
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES_PER_FRAME = 1152  # MPEG-1 Layer III
BITRATES_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
SAMPLE_RATES = (44100, 48000, 32000)
# block_type: 0 normal (long), 1 start, 2 short, 3 stop.
_FOLLOWS = {0: {0, 1}, 1: {2}, 2: {2, 3}, 3: {0, 1}}


class FrameError(ValueError):
    """The bytes are not a well-formed MPEG-1 Layer III frame."""


@dataclass
class Frame:
    """One frame, as a mutable copy of its bytes."""

    data: bytearray
    main_data_begin: int
    channels: int
    slot_start: int  # offset of the main-data slot within ``data``
    # block_type[granule][channel]
    block_types: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def slot_size(self) -> int:
        return len(self.data) - self.slot_start

    @property
    def bitrate_index(self) -> int:
        return (self.data[2] >> 4) & 0x0F


def frame_size(header: bytes | bytearray) -> int:
    """Length in bytes of the frame whose 4-byte header this is."""
    if len(header) < 4 or header[0] != 0xFF or (header[1] & 0xFE) != 0xFA:
        raise FrameError("not an MPEG-1 Layer III frame header")
    bitrate_index = (header[2] >> 4) & 0x0F
    rate_index = (header[2] >> 2) & 0x03
    if bitrate_index in (0, 15) or rate_index == 3:
        raise FrameError("free-format or reserved bit rate / sample rate")
    padding = (header[2] >> 1) & 0x01
    return 144 * BITRATES_KBPS[bitrate_index] * 1000 // SAMPLE_RATES[rate_index] + padding


def parse_frame(data: bytes | bytearray) -> Frame:
    header = data[:4]
    size = frame_size(header)
    if len(data) != size:
        raise FrameError(f"frame of {len(data)} bytes, its header says {size}")
    channels = 1 if (header[3] >> 6) == 3 else 2
    side_start = 4 if header[1] & 0x01 else 6  # protection bit 0: a 16-bit CRC follows
    side_len = 17 if channels == 1 else 32
    bits = int.from_bytes(data[side_start : side_start + side_len], "big")
    total = side_len * 8

    def field(offset: int, width: int) -> int:
        return (bits >> (total - offset - width)) & ((1 << width) - 1)

    main_data_begin = field(0, 9)
    pos = 9 + (5 if channels == 1 else 3) + 4 * channels  # private bits, scfsi
    granules: list[tuple[int, ...]] = []
    for _granule in range(2):
        types = []
        for _channel in range(channels):
            window_switching = field(pos + 12 + 9 + 8 + 4, 1)
            types.append(field(pos + 34, 2) if window_switching else 0)
            pos += 59
        granules.append(tuple(types))
    return Frame(
        data=bytearray(data),
        main_data_begin=main_data_begin,
        channels=channels,
        slot_start=side_start + side_len,
        block_types=(granules[0], granules[1]),
    )


def split_frames(stream: bytes | bytearray) -> list[Frame]:
    """Every frame of an MP3 stream made only of frames (no tags), in order."""
    frames = []
    pos = 0
    view = memoryview(stream)
    while pos < len(stream):
        size = frame_size(view[pos : pos + 4].tobytes())
        if pos + size > len(stream):
            raise FrameError(f"stream ends inside a frame at byte {pos}")
        frames.append(parse_frame(view[pos : pos + size].tobytes()))
        pos += size
    return frames


def windows_fit(before: Frame, after: Frame) -> bool:
    """Whether ``after``'s first granule may follow ``before``'s last, channel by channel."""
    last, first = before.block_types[1], after.block_types[0]
    return len(last) == len(first) and all(b in _FOLLOWS[a] for a, b in zip(last, first, strict=True))


def reservoir_tail(frames: list[Frame], end: int, count: int) -> bytes:
    """The last ``count`` main-data bytes in the slots of ``frames[:end]``."""
    parts: list[bytes] = []
    need = count
    index = end - 1
    while need > 0:
        if index < 0:
            raise FrameError("the bit reservoir reaches before the first frame")
        slot = frames[index].data[frames[index].slot_start :]
        take = min(need, len(slot))
        parts.append(bytes(slot[len(slot) - take :]))
        need -= take
        index -= 1
    return b"".join(reversed(parts))


def overwrite_reservoir_tail(frames: list[Frame], end: int, payload: bytes) -> None:
    """Write ``payload`` over the last ``len(payload)`` main-data bytes of ``frames[:end]``."""
    remaining = len(payload)
    index = end - 1
    while remaining > 0:
        if index < 0:
            raise FrameError("the bit reservoir reaches before the first frame")
        frame = frames[index]
        take = min(remaining, frame.slot_size)
        stop = len(frame.data)
        frame.data[stop - take : stop] = payload[remaining - take : remaining]
        remaining -= take
        index -= 1


def grow_slot(frame: Frame, extra: int) -> bool:
    """Raise ``frame``'s bit rate by the smallest step that gives its slot ``extra`` more
    bytes (zeros, appended). The end of a slot holds the next frames' reservoir bytes, so
    the caller writes those again afterwards (``overwrite_reservoir_tail``). False, and the
    frame unchanged, if even 320 kb/s is not enough or a CRC covers the header."""
    header = frame.data[:4]
    if not header[1] & 0x01:
        return False  # a CRC covers the header: leave the frame as it is
    rate = SAMPLE_RATES[(header[2] >> 2) & 0x03]
    padding = (header[2] >> 1) & 0x01
    for index in range(frame.bitrate_index + 1, len(BITRATES_KBPS)):
        size = 144 * BITRATES_KBPS[index] * 1000 // rate + padding
        if size - len(frame.data) >= extra:
            frame.data[2] = (frame.data[2] & 0x0F) | (index << 4)
            frame.data.extend(bytes(size - len(frame.data)))
            return True
    return False
