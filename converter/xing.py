"""The Xing/LAME header: the first frame of the MP3, silent, telling players how many frames
and bytes follow (so they show the right duration, VBR included, and seek by its table of
contents) and how many samples of encoder delay and padding to drop (gapless, exact length).

``FrameIndex`` follows the MP3 frames as they are written and remembers where each starts;
``header_frame`` then builds the header for them.
"""

from __future__ import annotations

import struct
from array import array

from converter import mp3frames
from converter.encoders import ENCODER_DELAY

_XING_BYTES = 120  # "Xing"/"Info", flags, frames, bytes, 100-byte TOC, quality
_LAME_BYTES = 36
_FLAGS = 0x0F  # frames, bytes, TOC and quality fields present


class FrameIndex:
    """Counts the frames of an MP3 stream given in pieces of any size and keeps each
    frame's offset (4 bytes a frame: 2 MiB for four hours)."""

    def __init__(self) -> None:
        self.offsets = array("I")
        self.total = 0  # bytes seen
        self.header = b""  # the first frame's header
        self._next = 0  # offset of the next frame's header
        self._carry = b""  # the start of a header cut by a piece boundary

    def feed(self, data: bytes) -> None:
        base = self.total - len(self._carry)
        buffer = self._carry + data if self._carry else data
        self.total += len(data)
        pos = self._next - base
        while pos + 4 <= len(buffer):
            header = buffer[pos : pos + 4]
            if not self.header:
                self.header = bytes(header)
            self.offsets.append(base + pos)
            pos += mp3frames.frame_size(header)
        self._next = base + pos
        self._carry = bytes(buffer[pos:]) if pos < len(buffer) else b""

    @property
    def frames(self) -> int:
        return len(self.offsets)


def _crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0x8005, reflected), as the LAME tag uses."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def header_frame(index: FrameIndex, samples: int, vbr: bool, bitrate_kbps: int) -> bytes:
    """The Xing (VBR) or Info (CBR) frame with a LAME extension, for the frames of ``index``
    holding ``samples`` samples of sound. Empty when there are no frames."""
    if not index.frames:
        return b""
    first = index.header
    channels = 1 if (first[3] >> 6) == 3 else 2
    side = 17 if channels == 1 else 32
    need = 4 + side + _XING_BYTES + _LAME_BYTES
    rate = mp3frames.SAMPLE_RATES[(first[2] >> 2) & 0x03]
    size = 0
    header = b""
    for bitrate_index, kbps in enumerate(mp3frames.BITRATES_KBPS):
        if kbps < (0 if vbr else bitrate_kbps) or bitrate_index == 0:
            continue
        size = 144 * kbps * 1000 // rate
        if size >= need:
            # Same version, layer and mode; no CRC, no padding, the bit rate that fits.
            header = bytes((first[0], first[1] | 0x01, (bitrate_index << 4) | (first[2] & 0x0C), first[3]))
            break
    total_bytes = size + index.total
    toc = bytearray(100)
    for percent in range(100):
        at = min(index.frames - 1, percent * index.frames // 100)
        toc[percent] = min(255, (size + index.offsets[at]) * 256 // total_bytes)
    out = bytearray(size)
    out[:4] = header
    xing = 4 + side
    out[xing : xing + _XING_BYTES] = (
        (b"Xing" if vbr else b"Info")
        + struct.pack(">III", _FLAGS, index.frames, total_bytes)
        + bytes(toc)
        + struct.pack(">I", 0)  # quality indicator: not given
    )
    padding = max(0, min(4095, index.frames * mp3frames.SAMPLES_PER_FRAME - ENCODER_DELAY - samples))
    lame = xing + _XING_BYTES
    out[lame : lame + 34] = (
        b"LAME3.100"
        + bytes(((4 if vbr else 1),))  # tag revision 0; VBR method: 4 vbr-mtrh, 1 CBR
        + bytes(1)  # lowpass unknown
        + bytes(8)  # peak and replay gains: not computed
        + bytes(1)  # encoding flags, ATH type
        + bytes((0 if vbr else min(255, bitrate_kbps),))
        + ((ENCODER_DELAY << 12) | padding).to_bytes(3, "big")
        + bytes(4)  # misc, MP3 gain, preset and surround
        + struct.pack(">I", total_bytes)
        + bytes(2)  # music CRC: not computed
    )
    out[lame + 34 : lame + 36] = struct.pack(">H", _crc16(bytes(out[: lame + 34])))
    return bytes(out)
