"""Audio track of a media file → MP3 bytes, produced as a stream.

PyAV opens the file and demuxes only the chosen audio stream (the first default audio
track, else the first audio track); video packets are discarded by the demuxer and never
decoded. Decoded audio is resampled to interleaved signed 16-bit PCM and encoded with
``lameenc`` (LAME bindings: the fast path); PyAV's libmp3lame encoder is the fallback.
Decoding runs on a thread of its own; with more than one core, LAME encodes segments of
the sound on several threads and their frames are joined into one stream
(``converter.segments``).

    transcoder = Transcoder(path, title="holiday", options=EncodeOptions())
    for chunk in transcoder.chunks():   # an ID3v2 tag first, then MP3 frames
        ...
    transcoder.duration_seconds

Bad input raises ``MediaError`` (a permanent failure) whose ``reason`` a person understands.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import queue
import struct
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import av.error

from converter import mp3frames, segments

log = logging.getLogger("converter.transcode")

# Sample rates of MPEG-1 Layer III, which carries every bit rate up to 320 kb/s.
MPEG1_RATES = (32000, 44100, 48000)
MIN_CHUNK = 64 * 1024  # bytes gathered before a chunk is yielded
PIPELINE_DEPTH = 32  # resampled frames between the decoding and the encoding thread
MAX_BAD_PACKETS = 50  # packets that fail to decode before the file counts as corrupt
MAX_AUTO_THREADS = 4  # encoder threads when not set: more gains little and costs a PCM buffer each
CBR_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

# Signatures of container formats we know; an unreadable file that has one is damaged,
# one that has none is not a media file at all.
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4, MOV, M4A
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"RIFF"),  # AVI, WAV
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x30\x26\xb2\x75"),  # ASF, WMV
)


class Failure(enum.Enum):
    EMPTY = "empty"
    NOT_MEDIA = "not_media"
    NO_AUDIO = "no_audio"
    CORRUPT = "corrupt"
    TRUNCATED = "truncated"
    TOO_LONG = "too_long"
    SILENT = "no_sound"
    TOO_LARGE = "too_large"
    MISSING = "missing"


class MediaError(Exception):
    """The file cannot be converted, and trying again will not help."""

    def __init__(self, kind: Failure, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @classmethod
    def too_large(cls, size: int, limit: int) -> MediaError:
        return cls(
            Failure.TOO_LARGE,
            f"the file is too large to convert ({size / 1024**2:.0f} MiB; "
            f"the limit is {limit / 1024**2:.0f} MiB)",
        )

    @classmethod
    def gone(cls) -> MediaError:
        return cls(Failure.MISSING, "the uploaded video is no longer available")


class Cancelled(Exception):
    """The caller asked the conversion to stop (the worker is shutting down)."""


@dataclass(frozen=True)
class EncodeOptions:
    bitrate_kbps: int = 192  # CBR bit rate, or the VBR ceiling's neighbour when vbr is set
    vbr: bool = False
    vbr_quality: int = 2  # LAME -V: 0 best … 9 smallest
    quality: int = 5  # LAME algorithm quality: 2 best … 7 fastest
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
        if self.encoder not in {"lameenc", "libmp3lame"}:
            raise ValueError("encoder must be lameenc or libmp3lame")
        if self.threads < 0:
            raise ValueError("encoder threads must be 0 (one per core) or more")

    @property
    def encoder_threads(self) -> int:
        return self.threads or min(available_cores(), MAX_AUTO_THREADS)


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


def output_rate(rate: int) -> int:
    """A sample rate MP3 carries at any bit rate: kept if MPEG-1, else 44.1 or 48 kHz."""
    if rate in MPEG1_RATES:
        return rate
    return 44100 if rate > 0 and rate % 11025 == 0 else 48000


def output_channels(channels: int) -> int:
    """Mono stays mono; stereo stays stereo; more channels are downmixed to stereo."""
    return 1 if channels == 1 else 2


def id3v2_title(title: str) -> bytes:
    """A minimal ID3v2.3 tag holding a TIT2 (title) frame, UTF-16 with BOM."""
    clean = "".join(ch for ch in title if unicodedata.category(ch)[0] != "C").strip()[:250]
    if not clean:
        return b""
    payload = b"\x01" + clean.encode("utf-16")  # encoding 1: UTF-16 with BOM (Python adds it)
    frame = b"TIT2" + struct.pack(">I", len(payload)) + b"\x00\x00" + payload
    size = len(frame)
    syncsafe = bytes(((size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F))
    return b"ID3\x03\x00\x00" + syncsafe + frame


def title_from_filename(filename: str) -> str:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, _ext = name.rpartition(".")
    return stem if dot and stem else name


def _looks_like_media(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) >= 1 and head[0] == 0x47 and path.stat().st_size >= 188:  # MPEG-TS sync byte
        with path.open("rb") as handle:
            handle.seek(188)
            if handle.read(1) == b"\x47":
                return True
    return any(head[offset : offset + len(sig)] == sig for offset, sig in _SIGNATURES)


class _Encoder(Protocol):
    def encode(self, frame: av.AudioFrame) -> bytes: ...
    def flush(self) -> bytes: ...


class _LameencEncoder:
    """LAME through ``lameenc``: takes interleaved s16 PCM."""

    pcm_format = "s16"

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

    def encode(self, frame: av.AudioFrame) -> bytes:
        return self.encode_pcm(_pcm(frame).tobytes())

    def encode_pcm(self, pcm: bytes) -> bytes:
        return bytes(self._encoder.encode(pcm))

    def flush(self) -> bytes:
        return bytes(self._encoder.flush())


@dataclass(frozen=True)
class _InFlight:
    """A segment being encoded, and the pool its PCM buffer goes back to once it is done."""

    future: Future[segments.Encoded]
    segment: segments.Segment
    buffers: segments.BufferPool


def _pcm(frame: av.AudioFrame) -> memoryview:
    """An interleaved s16 frame's samples, without a copy (its plane may be padded past them)."""
    return memoryview(frame.planes[0])[: frame.samples * 2 * frame.layout.nb_channels]


class _PyAVEncoder:
    """PyAV's libmp3lame: the fallback when lameenc is missing or refuses the settings."""

    pcm_format = "s16p"

    def __init__(self, rate: int, channels: int, options: EncodeOptions) -> None:
        ctx = av.CodecContext.create("libmp3lame", "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = rate
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "s16p"
        if options.vbr:
            ctx.qscale = True
            ctx.global_quality = options.vbr_quality * 118  # FF_QP2LAMBDA
        else:
            ctx.bit_rate = options.bitrate_kbps * 1000
        ctx.open()
        self._ctx = ctx
        self.frame_size = ctx.frame_size or 1152

    def encode(self, frame: av.AudioFrame) -> bytes:
        frame.pts = None
        return b"".join(bytes(packet) for packet in self._ctx.encode(frame))

    def flush(self) -> bytes:
        return b"".join(bytes(packet) for packet in self._ctx.encode(None))


def _make_encoder(rate: int, channels: int, options: EncodeOptions) -> _LameencEncoder | _PyAVEncoder:
    if options.encoder == "lameenc":
        try:
            return _LameencEncoder(rate, channels, options)
        except (ImportError, RuntimeError) as error:
            log.warning("lameenc unavailable; using PyAV's libmp3lame", extra={"error": repr(error)})
    return _PyAVEncoder(rate, channels, options)


class Transcoder:
    """One conversion. Opening validates the file (empty, not media, no audio, too long);
    ``chunks()`` then decodes and encodes, raising ``MediaError`` if the data is damaged."""

    def __init__(
        self,
        path: Path | str,
        title: str = "",
        options: EncodeOptions | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.should_stop = should_stop
        self.title = title
        self.options = options or EncodeOptions()
        self.samples_out = 0
        self.out_rate = 0
        self.out_channels = 0
        self.encoder_name = ""
        self.bytes_out = 0
        self._container = self._open()
        try:
            self._stream = self._choose_stream()
            self._declared = self._declared_duration()
            if self._declared is not None and self._declared > self.options.max_duration_seconds:
                raise self._too_long(self._declared)
        except BaseException:
            self._container.close()
            raise

    # -- opening
    def _open(self) -> av.container.InputContainer:
        try:
            size = self.path.stat().st_size
        except OSError as error:
            raise MediaError(Failure.EMPTY, "the uploaded file is missing") from error
        if size == 0:
            raise MediaError(Failure.EMPTY, "the uploaded file is empty (0 bytes)")
        try:
            return av.open(str(self.path), mode="r", metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
            if _looks_like_media(self.path):
                raise MediaError(
                    Failure.CORRUPT,
                    "the file looks like a video or audio file but is damaged or incomplete "
                    "(it may not have finished uploading)",
                ) from error
            raise MediaError(
                Failure.NOT_MEDIA, "the file is not a video or audio file we can read"
            ) from error

    def _choose_stream(self) -> av.AudioStream:
        audio = list(self._container.streams.audio)
        if not audio:
            raise MediaError(Failure.NO_AUDIO, "the video has no sound track")
        default = [s for s in audio if s.disposition & av.stream.Disposition.default]
        chosen = (default or audio)[0]
        for stream in self._container.streams:
            if stream.index != chosen.index:
                stream.discard = av.stream.Discard.all  # the demuxer skips their packets' data
        return chosen

    def _declared_duration(self) -> float | None:
        stream = self._stream
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
        if self._container.duration is not None and self._container.duration > 0:
            return self._container.duration / 1_000_000
        return None

    def _too_long(self, seconds: float) -> MediaError:
        limit = self.options.max_duration_seconds
        return MediaError(
            Failure.TOO_LONG,
            f"the sound track is too long ({_hms(seconds)}); the limit is {_hms(limit)}",
        )

    # -- conversion
    @property
    def duration_seconds(self) -> float:
        return self.samples_out / self.out_rate if self.out_rate else 0.0

    def chunks(self) -> Iterator[bytes]:
        """ID3 tag, then MP3 data in chunks of at least ``MIN_CHUNK`` bytes (the last may be smaller)."""
        try:
            buffer = bytearray(id3v2_title(self.title))
            for data in self._encode():
                buffer += data
                if len(buffer) >= MIN_CHUNK:
                    self.bytes_out += len(buffer)
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                self.bytes_out += len(buffer)
                yield bytes(buffer)
        finally:
            self.close()

    def _encode(self) -> Iterator[bytes]:
        """Decoding (+ resampling) runs on a thread of its own, joined to this one by a small
        bounded queue. With one encoder thread, LAME encodes here, frame by frame; with
        several, the decoding thread cuts the sound into segments that a pool of LAME
        encoders works on at once, and this thread joins their frames in order. PyAV and
        LAME release the GIL, so the threads run in parallel. Memory stays bounded: by the
        queue, and by a fixed set of PCM buffers (one per encoder thread, plus one)."""
        items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=PIPELINE_DEPTH)
        stop = threading.Event()
        threads = self.options.encoder_threads if self.options.encoder == "lameenc" else 1
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lame") if threads > 1 else None

        def put(item: tuple[str, object]) -> None:
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise segments.Stopped

        def produce() -> None:
            try:
                source = self._resampled()
                encoder = next(source)
                assert isinstance(encoder, _LameencEncoder | _PyAVEncoder)
                if pool is not None and isinstance(encoder, _LameencEncoder):
                    self._produce_segments(source, pool, threads, stop, put)
                else:
                    put(("encoder", encoder))
                    for frame in source:
                        assert isinstance(frame, av.AudioFrame)
                        self._count(frame)
                        put(("frame", frame))
                put(("end", None))
            except segments.Stopped:
                return
            except BaseException as error:  # noqa: BLE001 - handed over to the consuming thread
                with contextlib.suppress(segments.Stopped):
                    put(("error", error))

        producer = threading.Thread(target=produce, name="decode", daemon=True)
        producer.start()
        joiner = segments.Joiner()
        try:
            encoder: _LameencEncoder | _PyAVEncoder | None = None
            while True:
                kind, value = items.get()
                if kind == "error":
                    assert isinstance(value, BaseException)
                    raise value
                if kind == "end":
                    break
                self._check_stop()
                if kind == "encoder":
                    assert isinstance(value, _LameencEncoder | _PyAVEncoder)
                    encoder = value
                    continue
                if kind == "frame":
                    assert encoder is not None and isinstance(value, av.AudioFrame)
                    data = encoder.encode(value)
                else:
                    assert isinstance(value, _InFlight)
                    encoded = value.future.result()
                    value.buffers.give(value.segment.buffer)
                    data = joiner.add(encoded)
                if data:
                    yield data
            if encoder is not None:
                yield encoder.flush()
            self._check_complete()
            if joiner.stats.joins:
                log.debug("segments joined", extra={"joins": joiner.stats.joins, "exact": joiner.stats.exact})
        finally:
            stop.set()
            producer.join()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _produce_segments(
        self,
        source: Iterator[object],
        pool: ThreadPoolExecutor,
        threads: int,
        stop: threading.Event,
        put: Callable[[tuple[str, object]], None],
    ) -> None:
        """On the decoding thread: cut the PCM into segments and submit them to ``pool``."""
        rate, channels, options = self.out_rate, self.out_channels, self.options
        self.encoder_name = f"{self.encoder_name} x{threads}"

        def make() -> _LameencEncoder:
            return _LameencEncoder(rate, channels, options)

        expected = (
            None if self._declared is None else int(self._declared * rate / mp3frames.SAMPLES_PER_FRAME)
        )
        length = segments.segment_frames(expected, threads)
        frame_bytes = mp3frames.SAMPLES_PER_FRAME * 2 * channels
        buffers = segments.BufferPool(threads + 1, segments.buffer_bytes(frame_bytes, length), stop)
        segmenter = segments.Segmenter(frame_bytes, length, buffers)

        def submit(segment: segments.Segment) -> None:
            put(("segment", _InFlight(pool.submit(segments.encode_segment, make, segment), segment, buffers)))

        for frame in source:
            assert isinstance(frame, av.AudioFrame)
            self._count(frame)
            for segment in segmenter.feed(_pcm(frame)):
                submit(segment)
        submit(segmenter.finish())

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("conversion stopped")

    def _count(self, frame: av.AudioFrame) -> None:
        """Account for a decoded frame (on the decoding thread), before it is encoded."""
        self._check_stop()
        self.samples_out += frame.samples
        if self.samples_out > self.options.max_duration_seconds * self.out_rate:
            raise self._too_long(self.samples_out / self.out_rate)
        if self.options.slowdown > 0:
            time.sleep(self.options.slowdown * frame.samples / self.out_rate)

    def _resampled(self) -> Iterator[_LameencEncoder | _PyAVEncoder | av.AudioFrame]:
        """The encoder to use (first), then decoded audio in the encoder's PCM format."""
        resampler: av.AudioResampler | None = None
        for frame in self._decoded_frames():
            if resampler is None:
                self.out_rate = output_rate(frame.sample_rate)
                self.out_channels = output_channels(frame.layout.nb_channels)
                encoder = _make_encoder(self.out_rate, self.out_channels, self.options)
                self.encoder_name = type(encoder).__name__
                resampler = av.AudioResampler(
                    format=encoder.pcm_format,
                    layout="mono" if self.out_channels == 1 else "stereo",
                    rate=self.out_rate,
                    frame_size=getattr(encoder, "frame_size", None),
                )
                yield encoder
            frame.pts = None
            yield from resampler.resample(frame)
        if resampler is None:
            if self._declared is not None and self._declared > 0.5:
                raise MediaError(
                    Failure.CORRUPT, "the file is damaged or incomplete: none of its sound could be decoded"
                )
            raise MediaError(Failure.SILENT, "the sound track is empty (no audio could be decoded)")
        yield from resampler.resample(None)

    def _decoded_frames(self) -> Iterator[av.AudioFrame]:
        bad = 0
        decoded_any = False
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as error:
                    bad += 1
                    log.debug("packet failed to decode", extra={"error": repr(error)})
                    if bad > MAX_BAD_PACKETS:
                        raise self._corrupt() from error
                    continue
                for frame in frames:
                    assert isinstance(frame, av.AudioFrame)
                    decoded_any = True
                    yield frame
        except av.error.FFmpegError as error:  # demuxing failed: the container is damaged
            if not decoded_any:
                raise self._corrupt() from error
            raise MediaError(
                Failure.TRUNCATED, "the file is damaged or incomplete: it ends in the middle of the sound"
            ) from error

    def _corrupt(self) -> MediaError:
        return MediaError(Failure.CORRUPT, "the sound track is damaged and cannot be decoded")

    def _check_complete(self) -> None:
        """A file much shorter than its header says was cut off (an interrupted upload)."""
        declared = self._declared
        got = self.duration_seconds
        if declared is not None and declared > 1.0 and got < declared * 0.9 - 0.25:
            raise MediaError(
                Failure.TRUNCATED,
                f"the file is incomplete: it says it lasts {_hms(declared)} but only "
                f"{_hms(got)} of sound could be read (the upload may have been cut off)",
            )

    def close(self) -> None:
        self._container.close()


def _hms(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s"


def transcode_file(
    source: Path, target: Path, title: str = "", options: EncodeOptions | None = None
) -> float:
    """Convert ``source`` into the MP3 file ``target``; returns the duration in seconds.
    (For tools and tests; the worker streams ``Transcoder.chunks()`` into storage.)"""
    transcoder = Transcoder(source, title, options)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with tmp.open("wb") as out:
            for chunk in transcoder.chunks():
                out.write(chunk)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return transcoder.duration_seconds
