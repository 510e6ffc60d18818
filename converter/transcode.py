"""One conversion: a media file's audio track → an MP3 (ID3v2.4 tag, Xing/LAME header,
frames), produced as a stream of chunks.

    transcoder = Transcoder(path, title="holiday", options=EncodeOptions(), job=ConversionOptions())
    transcoder.source                    # SourceInfo: what probing found
    for chunk in transcoder.chunks():    # the tag, the header, then the MP3 frames
        ...
    transcoder.duration_seconds

Opening probes the file and checks the job's options against it (track, start); bad input
raises ``MediaError`` (a permanent failure) whose ``reason`` a person understands. The
frames are encoded into a temporary file next to the video first: the header at the front
counts them, so it can only be written once they are all there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import av
from video2mp3.storage.v1 import options_pb2

from converter import loudness, xing
from converter.encoders import EncodeOptions, output_channels, output_rate
from converter.media import (
    Cancelled,
    Failure,
    MediaError,
    check_range,
    choose_audio,
    open_media,
    probe,
    stream_duration,
    title_from_filename,
    too_long,
)
from converter.pipeline import Pipeline, Plan, decoded_frames
from converter.tags import Tags, cover_for, read_chapters, read_tags

__all__ = [
    "Cancelled",
    "EncodeOptions",
    "Failure",
    "MediaError",
    "Transcoder",
    "output_channels",
    "output_rate",
    "title_from_filename",
    "transcode_file",
]

MIN_CHUNK = 64 * 1024  # bytes gathered before a chunk is yielded
READ_CHUNK = 256 * 1024  # bytes of the encoded frames read back at once


class Transcoder:
    """Opening validates the file (empty, not media, no audio, too long, options that do
    not fit it); ``chunks()`` then decodes and encodes, raising ``MediaError`` if the data
    is damaged."""

    def __init__(
        self,
        path: Path | str,
        title: str = "",
        options: EncodeOptions | None = None,
        should_stop: Callable[[], bool] | None = None,
        job: options_pb2.ConversionOptions | None = None,
        on_probed: Callable[[options_pb2.SourceInfo], None] | None = None,
        filename: str = "",
    ) -> None:
        self.path = Path(path)
        self.should_stop = should_stop
        self.title = title
        self.job = job or options_pb2.ConversionOptions()
        self.options = (options or EncodeOptions()).for_job(self.job)
        self.bytes_out = 0
        self._pipeline: Pipeline | None = None
        self._frames_path: Path | None = None
        self._container = open_media(self.path)
        try:
            self.source = probe(self._container, filename or self.path.name)
            if self.job.HasField("track") and 0 <= self.job.track < len(self.source.audio_tracks):
                self.source.chosen_track = self.job.track
            if on_probed is not None:
                on_probed(self.source)
            self._stream = choose_audio(self._container, self.source, self.job)
            self._declared = stream_duration(self._container, self._stream)
            check_range(self.job, self._declared)
            self.start = self.job.start_seconds if self.job.HasField("start_seconds") else 0.0
            self.end = self.job.end_seconds if self.job.HasField("end_seconds") else None
            if self._declared is not None and self.end is not None:
                self.end = min(self.end, self._declared)
            length = self._length()
            if length is not None and length > self.options.max_duration_seconds:
                raise too_long(length, self.options.max_duration_seconds)
        except BaseException:
            self._container.close()
            raise

    def _length(self) -> float | None:
        if self.end is not None:
            return self.end - self.start
        return None if self._declared is None else self._declared - self.start

    @property
    def duration_seconds(self) -> float:
        return self._pipeline.duration_seconds if self._pipeline is not None else 0.0

    @property
    def encoder_name(self) -> str:
        return self._pipeline.encoder_name if self._pipeline is not None else ""

    def _gain(self) -> loudness.Gain | None:
        """First pass of normalisation: the loudness of the part converted."""
        if not self.job.normalize:
            return None
        with open_media(self.path) as container:
            stream = container.streams.audio[self.source.chosen_track]
            for other in container.streams:
                if other.index != stream.index:
                    other.discard = av.stream.Discard.all
            frames = loudness.window(decoded_frames(container, stream, self.start), self.start, self.end)
            measured = loudness.measure(self._checked(frames))
        return loudness.Gain.to_target(measured)

    def _checked(self, frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
        """The measuring pass stops like the encoding one: when asked to, or past the limit."""
        seconds = 0.0
        for frame in frames:
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("conversion stopped")
            seconds += frame.samples / (frame.sample_rate or 1)
            if seconds > self.options.max_duration_seconds:
                raise too_long(seconds, self.options.max_duration_seconds)
            yield frame

    def chunks(self) -> Iterator[bytes]:
        """Tag and header, then the MP3 frames, in chunks of at least ``MIN_CHUNK`` bytes
        (the last may be smaller)."""
        fd, name = tempfile.mkstemp(prefix=".mp3-", suffix=".frames", dir=self.path.parent)
        frames_path = self._frames_path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as frames_file:
                index = self._encode_into(frames_file)
                pipeline = self._pipeline
                assert pipeline is not None
                header = xing.header_frame(
                    index, pipeline.samples_out, self.options.vbr, self.options.bitrate_kbps
                )
                buffer = bytearray(self._tags().id3() + header)
                frames_file.seek(0)
                while data := frames_file.read(READ_CHUNK):
                    buffer += data
                    if len(buffer) >= MIN_CHUNK:
                        self.bytes_out += len(buffer)
                        yield bytes(buffer)
                        buffer.clear()
                if buffer:
                    self.bytes_out += len(buffer)
                    yield bytes(buffer)
        finally:
            frames_path.unlink(missing_ok=True)
            self.close()

    def _encode_into(self, out: BinaryIO) -> xing.FrameIndex:
        plan = Plan(
            encode=self.options,
            start=self.start,
            end=self.end,
            sample_rate=self.job.sample_rate if self.job.HasField("sample_rate") else 0,
            channel_mode=self.job.channels,
            gain=self._gain(),
            declared=self._declared,
        )
        self._pipeline = Pipeline(self._container, self._stream, plan, self.should_stop)
        index = xing.FrameIndex()
        for data in self._pipeline.frames():
            if data:
                index.feed(data)
                out.write(data)
        return index

    def _tags(self) -> Tags:
        return Tags(
            text=read_tags(self._container, self.job, self.title),
            chapters=read_chapters(self._container, self.start, self.end),
            cover=cover_for(str(self.path), self.job.cover),
        )

    def close(self) -> None:
        """Closes the file and removes the encoded frames, also when ``chunks()`` was left
        unfinished (a failed upload stops reading it)."""
        self._container.close()
        if self._frames_path is not None:
            self._frames_path.unlink(missing_ok=True)


def transcode_file(
    source: Path,
    target: Path,
    title: str = "",
    options: EncodeOptions | None = None,
    job: options_pb2.ConversionOptions | None = None,
) -> float:
    """Convert ``source`` into the MP3 file ``target``; returns the duration in seconds.
    (For tools and tests; the worker streams ``Transcoder.chunks()`` into storage.)"""
    transcoder = Transcoder(source, title, options, job=job)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with tmp.open("wb") as out:
            for chunk in transcoder.chunks():
                out.write(chunk)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return transcoder.duration_seconds
