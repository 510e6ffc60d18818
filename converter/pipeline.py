"""The decode → encode pipeline of one conversion: MP3 frames out, no tags.

Decoding (+ trimming, gain, resampling to interleaved s16) runs on a thread of its own,
joined to the caller's by a small bounded queue. With one encoder thread, LAME encodes on
the caller's thread, piece by piece; with several, the decoding thread cuts the sound
into segments that a pool of LAME encoders works on at once, and the caller joins their
frames in order (``converter.segments``). PyAV and LAME release the GIL, so the threads
run in parallel. Memory stays bounded: by the queue, and by a fixed set of PCM buffers.

Trimming seeks: the demuxer jumps to the packet before ``start`` and the samples before it
are dropped exactly; decoding stops at ``end``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import av
import av.error

from converter import loudness, mp3frames, segments
from converter.encoders import (
    EncodeOptions,
    LameencEncoder,
    PyAVEncoder,
    make_encoder,
    output_channels,
    output_rate,
)
from converter.media import Cancelled, Failure, MediaError, hms, too_long

log = logging.getLogger("converter.pipeline")

PIPELINE_DEPTH = 32  # pieces of PCM between the decoding and the encoding thread
MAX_BAD_PACKETS = 50  # packets that fail to decode before the file counts as corrupt


@dataclass(frozen=True)
class Plan:
    """What to make of the chosen stream."""

    encode: EncodeOptions
    start: float = 0.0
    end: float | None = None
    sample_rate: int = 0  # 0: from the source
    channel_mode: int = 0  # options_pb2.ChannelMode
    gain: loudness.Gain | None = None
    declared: float | None = None  # the stream's declared duration, for the truncation check


@dataclass(frozen=True)
class _InFlight:
    """A segment being encoded, and the pool its PCM buffer goes back to once it is done."""

    future: Future[segments.Encoded]
    segment: segments.Segment
    buffers: segments.BufferPool


def _corrupt() -> MediaError:
    return MediaError(Failure.CORRUPT, "the sound track is damaged and cannot be decoded")


def decoded_frames(
    container: av.container.InputContainer, stream: av.AudioStream, start: float = 0.0
) -> Iterator[av.AudioFrame]:
    """The stream's frames from (just before) ``start``: the demuxer seeks there first."""
    if start > 0:
        container.seek(int(start * 1_000_000), backward=True)  # AV_TIME_BASE: any stream's keyframe
    bad = 0
    decoded_any = False
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as error:
                bad += 1
                log.debug("packet failed to decode", extra={"error": repr(error)})
                if bad > MAX_BAD_PACKETS:
                    raise _corrupt() from error
                continue
            for frame in frames:
                assert isinstance(frame, av.AudioFrame)
                decoded_any = True
                yield frame
    except av.error.FFmpegError as error:  # demuxing failed: the container is damaged
        if not decoded_any:
            raise _corrupt() from error
        raise MediaError(
            Failure.TRUNCATED, "the file is damaged or incomplete: it ends in the middle of the sound"
        ) from error


class Pipeline:
    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.AudioStream,
        plan: Plan,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.container = container
        self.stream = stream
        self.plan = plan
        self.options = plan.encode
        self.should_stop = should_stop
        self.samples_out = 0
        self.out_rate = 0
        self.out_channels = 0
        self.encoder_name = ""

    @property
    def duration_seconds(self) -> float:
        return self.samples_out / self.out_rate if self.out_rate else 0.0

    def frames(self) -> Iterator[bytes]:
        """MP3 frames, in pieces of any size."""
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
                source = self._pcm()
                encoder = next(source)
                assert isinstance(encoder, LameencEncoder | PyAVEncoder)
                if pool is not None and isinstance(encoder, LameencEncoder):
                    self._produce_segments(source, pool, threads, stop, put)
                else:
                    put(("encoder", encoder))
                    for pcm in source:
                        put(("pcm", pcm))
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
            encoder: LameencEncoder | PyAVEncoder | None = None
            while True:
                kind, value = items.get()
                if kind == "error":
                    assert isinstance(value, BaseException)
                    raise value
                if kind == "end":
                    break
                self._check_stop()
                if kind == "encoder":
                    assert isinstance(value, LameencEncoder | PyAVEncoder)
                    encoder = value
                    continue
                if kind == "pcm":
                    assert encoder is not None and isinstance(value, memoryview)
                    data = encoder.encode_pcm(value.tobytes())
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

        def make() -> LameencEncoder:
            return LameencEncoder(rate, channels, options)

        expected = self._expected_seconds()
        frames = None if expected is None else int(expected * rate / mp3frames.SAMPLES_PER_FRAME)
        length = segments.segment_frames(frames, threads)
        frame_bytes = mp3frames.SAMPLES_PER_FRAME * 2 * channels
        buffers = segments.BufferPool(threads + 1, segments.buffer_bytes(frame_bytes, length), stop)
        segmenter = segments.Segmenter(frame_bytes, length, buffers)

        def submit(segment: segments.Segment) -> None:
            put(("segment", _InFlight(pool.submit(segments.encode_segment, make, segment), segment, buffers)))

        for pcm in source:
            assert isinstance(pcm, memoryview)
            for segment in segmenter.feed(pcm):
                submit(segment)
        submit(segmenter.finish())

    def _expected_seconds(self) -> float | None:
        """How long the output should be, from the declared duration and the trim."""
        declared, plan = self.plan.declared, self.plan
        if declared is None:
            return None if plan.end is None else plan.end - plan.start
        return max(0.0, min(declared, plan.end if plan.end is not None else declared) - plan.start)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("conversion stopped")

    def _count(self, samples: int) -> None:
        """Account for PCM about to be encoded (on the decoding thread)."""
        self._check_stop()
        self.samples_out += samples
        if self.samples_out > self.options.max_duration_seconds * self.out_rate:
            raise too_long(self.samples_out / self.out_rate, self.options.max_duration_seconds)
        if self.options.slowdown > 0:
            time.sleep(self.options.slowdown * samples / self.out_rate)

    def _pcm(self) -> Iterator[LameencEncoder | PyAVEncoder | memoryview]:
        """The encoder to use (first), then interleaved s16 PCM of exactly [start, end)."""
        plan = self.plan
        resampler: av.AudioResampler | None = None
        skip = 0  # samples still to drop before start
        keep: int | None = None  # samples still to encode before end
        frames: Iterator[av.AudioFrame] = decoded_frames(self.container, self.stream, plan.start)
        if plan.gain is not None:
            frames = loudness.apply(frames, plan.gain)
        for frame in frames:
            if resampler is None:
                self.out_rate = rate = output_rate(frame.sample_rate, plan.sample_rate)
                self.out_channels = output_channels(frame.layout.nb_channels, plan.channel_mode)
                encoder = make_encoder(rate, self.out_channels, self.options)
                self.encoder_name = type(encoder).__name__
                layout = "mono" if self.out_channels == 1 else "stereo"
                resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
                first = frame.time if plan.start > 0 and frame.time is not None else 0.0
                skip = max(0, round((plan.start - first) * rate))
                keep = None if plan.end is None else round((plan.end - plan.start) * rate)
                yield encoder
            frame.pts = None
            for out in resampler.resample(frame):
                pcm, skip, keep = self._cut(out, skip, keep)
                if pcm is not None:
                    yield pcm
                if keep == 0:
                    return
        if resampler is None:
            if plan.declared is not None and plan.declared > 0.5:
                raise MediaError(
                    Failure.CORRUPT, "the file is damaged or incomplete: none of its sound could be decoded"
                )
            raise MediaError(Failure.SILENT, "the sound track is empty (no audio could be decoded)")
        for out in resampler.resample(None):
            pcm, skip, keep = self._cut(out, skip, keep)
            if pcm is not None:
                yield pcm
        if self.samples_out == 0 and plan.start > 0:
            raise MediaError(
                Failure.OUT_OF_RANGE, f"start {hms(plan.start)} is past the end of the sound track"
            )

    def _cut(
        self, frame: av.AudioFrame, skip: int, keep: int | None
    ) -> tuple[memoryview | None, int, int | None]:
        """The part of ``frame`` after the samples to skip and within those to keep."""
        width = 2 * self.out_channels
        samples = frame.samples
        first = min(skip, samples)
        last = samples if keep is None else min(samples, first + keep)
        if last <= first:
            return None, skip - first, keep
        self._count(last - first)
        pcm = memoryview(frame.planes[0])[first * width : last * width]
        return pcm, skip - first, None if keep is None else keep - (last - first)

    def _check_complete(self) -> None:
        """A file much shorter than its header says was cut off (an interrupted upload)."""
        expected = self._expected_seconds() if self.plan.declared is not None else None
        got = self.duration_seconds
        if expected is not None and expected > 1.0 and got < expected * 0.9 - 0.25:
            raise MediaError(
                Failure.TRUNCATED,
                f"the file is incomplete: it says it lasts {hms(self.plan.declared or 0)} but only "
                f"{hms(got)} of sound could be read (the upload may have been cut off)",
            )
