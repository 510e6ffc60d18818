"""MP3 encoders, the service-wide encoder settings, and the per-job output format.

Both encoders take interleaved signed 16-bit PCM (``encode_pcm``): ``lameenc`` (LAME
bindings, the fast path) and PyAV's libmp3lame (the fallback when lameenc is missing or
refuses the settings). The default is what ``ffmpeg -c:a libmp3lame -b:a 192k`` does:
CBR 192 kb/s at LAME's algorithm quality 3.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import av
from video2mp3.storage.v1 import options_pb2

log = logging.getLogger("converter.encoders")

# Sample rates of MPEG-1 Layer III, which carries every bit rate up to 320 kb/s.
MPEG1_RATES = (32000, 44100, 48000)
CBR_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MAX_AUTO_THREADS = 4  # encoder threads when not set: more gains little and costs a PCM buffer each
ENCODER_DELAY = 576  # samples LAME puts before the sound (lame_get_encoder_delay)


@dataclass(frozen=True)
class EncodeOptions:
    bitrate_kbps: int = 192  # CBR bit rate
    vbr: bool = False
    vbr_quality: int = 2  # LAME -V: 0 best … 9 smallest
    quality: int = 3  # LAME algorithm quality: 2 best … 7 fastest; 3 is ffmpeg's default
    max_duration_seconds: float = 4 * 3600.0
    encoder: str = "lameenc"  # or "libmp3lame" (PyAV)
    threads: int = 0  # LAME encoders running at once (lameenc only); 0: one per core, at most 4
    # Test-only, never a setting: sleep this many seconds per second of audio, to make a long
    # conversion (tests/slow_converter.py).
    slowdown: float = 0.0

    def __post_init__(self) -> None:
        if not self.vbr and self.bitrate_kbps not in CBR_BITRATES:
            raise ValueError(f"MP3 bit rate must be one of {CBR_BITRATES} kb/s, got {self.bitrate_kbps}")
        if not 0 <= self.vbr_quality <= 9:
            raise ValueError("VBR quality must be 0 … 9")
        if not 0 <= self.quality <= 9:
            raise ValueError("LAME algorithm quality must be 0 … 9")
        if self.encoder not in {"lameenc", "libmp3lame"}:
            raise ValueError("encoder must be lameenc or libmp3lame")
        if self.threads < 0:
            raise ValueError("encoder threads must be 0 (one per core) or more")

    @property
    def encoder_threads(self) -> int:
        return self.threads or min(available_cores(), MAX_AUTO_THREADS)

    def for_job(self, options: options_pb2.ConversionOptions) -> EncodeOptions:
        """These settings with a job's bit rate or VBR quality (validated by the gateway)."""
        if options.HasField("vbr_quality"):
            return replace(self, vbr=True, vbr_quality=options.vbr_quality)
        if options.HasField("bitrate_kbps"):
            return replace(self, vbr=False, bitrate_kbps=options.bitrate_kbps)
        return self


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def output_rate(rate: int, asked: int = 0) -> int:
    """The MP3's sample rate: the one asked for, else the source's if MPEG-1 carries it,
    else the nearest of the same family (44.1 kHz for multiples of 11025, else 48 kHz)."""
    if asked:
        return asked
    if rate in MPEG1_RATES:
        return rate
    return 44100 if rate > 0 and rate % 11025 == 0 else 48000


def output_channels(channels: int, mode: int = options_pb2.CHANNEL_MODE_UNSPECIFIED) -> int:
    """Mono stays mono; anything else becomes stereo; unless a mode is asked for."""
    if mode == options_pb2.CHANNEL_MODE_MONO:
        return 1
    if mode == options_pb2.CHANNEL_MODE_STEREO:
        return 2
    return 1 if channels == 1 else 2


class Encoder(Protocol):
    def encode_pcm(self, pcm: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class LameencEncoder:
    """LAME through ``lameenc``."""

    def __init__(self, rate: int, channels: int, options: EncodeOptions) -> None:
        import lameenc

        encoder = lameenc.Encoder()
        encoder.set_in_sample_rate(rate)
        encoder.set_out_sample_rate(rate)
        encoder.set_channels(channels)
        encoder.set_quality(options.quality)
        if options.vbr:
            encoder.set_vbr(4)  # vbr_mtrh: LAME's default VBR mode
            encoder.set_vbr_quality(options.vbr_quality)
        else:
            encoder.set_bit_rate(options.bitrate_kbps)
        self._encoder = encoder

    def encode_pcm(self, pcm: bytes) -> bytes:
        return bytes(self._encoder.encode(pcm))

    def flush(self) -> bytes:
        return bytes(self._encoder.flush())


class PyAVEncoder:
    """PyAV's libmp3lame: the fallback when lameenc is missing or refuses the settings."""

    def __init__(self, rate: int, channels: int, options: EncodeOptions) -> None:
        ctx = av.CodecContext.create("libmp3lame", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = rate
        self._layout = "mono" if channels == 1 else "stereo"
        ctx.layout = self._layout
        ctx.format = "s16p"
        ctx.options = {"compression_level": str(options.quality)}
        if options.vbr:
            ctx.qscale = True
            ctx.global_quality = options.vbr_quality * 118  # FF_QP2LAMBDA
        else:
            ctx.bit_rate = options.bitrate_kbps * 1000
        ctx.open()
        self._ctx = ctx
        self._rate = rate
        self._frame_bytes = 2 * channels
        self._planar = av.AudioResampler(
            format="s16p", layout=self._layout, rate=rate, frame_size=ctx.frame_size or 1152
        )

    def encode_pcm(self, pcm: bytes) -> bytes:
        samples = len(pcm) // self._frame_bytes
        if not samples:
            return b""
        frame = av.AudioFrame(format="s16", layout=self._layout, samples=samples)
        frame.planes[0].update(pcm[: samples * self._frame_bytes])
        frame.sample_rate = self._rate
        return b"".join(self._encode(f) for f in self._planar.resample(frame))

    def _encode(self, frame: av.AudioFrame | None) -> bytes:
        if frame is not None:
            frame.pts = None
        return b"".join(bytes(packet) for packet in self._ctx.encode(frame))

    def flush(self) -> bytes:
        rest = b"".join(self._encode(f) for f in self._planar.resample(None))
        return rest + self._encode(None)


def make_encoder(rate: int, channels: int, options: EncodeOptions) -> LameencEncoder | PyAVEncoder:
    if options.encoder == "lameenc":
        try:
            return LameencEncoder(rate, channels, options)
        except (ImportError, RuntimeError) as error:
            log.warning("lameenc unavailable; using PyAV's libmp3lame", extra={"error": repr(error)})
    return PyAVEncoder(rate, channels, options)
