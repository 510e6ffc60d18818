"""Opening and probing an uploaded media file, and the errors that make a conversion
impossible (``MediaError``: permanent, with a reason a person understands).

    container = open_media(path)
    source = probe(container, path.name)        # SourceInfo: container, duration, audio tracks
    stream = choose_audio(container, source, options)  # the track asked for, else the default
"""

from __future__ import annotations

import enum
from pathlib import Path

import av
import av.error
from video2mp3.storage.v1 import options_pb2

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
    NO_SUCH_TRACK = "no_such_track"
    OUT_OF_RANGE = "out_of_range"


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


def hms(seconds: float) -> str:
    """A duration for people: ``1 h 02 min 03 s``, ``4 min 05 s``, ``7.5 s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s"


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


def open_media(path: Path) -> av.container.InputContainer:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise MediaError(Failure.EMPTY, "the uploaded file is missing") from error
    if size == 0:
        raise MediaError(Failure.EMPTY, "the uploaded file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        if _looks_like_media(path):
            raise MediaError(
                Failure.CORRUPT,
                "the file looks like a video or audio file but is damaged or incomplete "
                "(it may not have finished uploading)",
            ) from error
        raise MediaError(Failure.NOT_MEDIA, "the file is not a video or audio file we can read") from error


def container_name(container: av.container.InputContainer, filename: str) -> str:
    """The demuxer's name for the format; of a list (``mov,mp4,m4a,…``) the one the file's
    extension names, else the first."""
    names = container.format.name.split(",")
    extension = filename.rpartition(".")[2].lower()
    return extension if extension in names else names[0]


def stream_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration the file declares for ``stream`` (else for the whole file), in seconds."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


def _is_default(stream: av.AudioStream) -> bool:
    return bool(stream.disposition & av.stream.Disposition.default)


def probe(container: av.container.InputContainer, filename: str) -> options_pb2.SourceInfo:
    """What the file holds: container, duration, audio tracks (no decoding)."""
    tracks = [
        options_pb2.AudioTrack(
            index=index,
            codec=stream.codec_context.name,
            channels=stream.codec_context.channels,
            sample_rate=stream.codec_context.sample_rate or 0,
            language=str(stream.metadata.get("language", "")).strip()[:16],
            is_default=_is_default(stream),
        )
        for index, stream in enumerate(container.streams.audio)
    ]
    durations = [stream_duration(container, s) for s in container.streams.audio]
    known = [d for d in durations if d]
    duration = max(known) if known else (container.duration or 0) / 1_000_000
    source = options_pb2.SourceInfo(
        container=container_name(container, filename), duration_seconds=duration, audio_tracks=tracks
    )
    if tracks:
        default = [t.index for t in tracks if t.is_default]
        source.chosen_track = default[0] if default else 0
    return source


def describe_tracks(source: options_pb2.SourceInfo) -> str:
    """``the video has 2 audio tracks: 0 (aac, en), 1 (aac, de)``."""
    count = len(source.audio_tracks)
    parts = [f"{t.index} ({', '.join(x for x in (t.codec, t.language) if x)})" for t in source.audio_tracks]
    noun = "audio track" if count == 1 else "audio tracks"
    return f"the video has {count} {noun}: {', '.join(parts)}"


def choose_audio(
    container: av.container.InputContainer,
    source: options_pb2.SourceInfo,
    options: options_pb2.ConversionOptions,
) -> av.AudioStream:
    """The audio stream to convert; every other stream is discarded by the demuxer.
    ``source.chosen_track`` is updated. MediaError when the track asked for is missing."""
    audio = list(container.streams.audio)
    if not audio:
        raise MediaError(Failure.NO_AUDIO, "the video has no sound track")
    if options.HasField("track"):
        if not 0 <= options.track < len(audio):
            raise MediaError(
                Failure.NO_SUCH_TRACK,
                f"there is no audio track {options.track}: {describe_tracks(source)}",
            )
        source.chosen_track = options.track
    chosen = audio[source.chosen_track]
    for stream in container.streams:
        if stream.index != chosen.index:
            stream.discard = av.stream.Discard.all  # the demuxer skips their packets' data
    return chosen


def check_range(options: options_pb2.ConversionOptions, duration: float | None) -> None:
    """A ``start`` (or ``end``) past the end of the sound track: MediaError."""
    if duration is None or duration <= 0:
        return
    if options.HasField("start_seconds") and options.start_seconds >= duration:
        raise MediaError(
            Failure.OUT_OF_RANGE,
            f"start {hms(options.start_seconds)} is past the end of the sound track, "
            f"which lasts {hms(duration)}",
        )


def too_long(seconds: float, limit: float) -> MediaError:
    return MediaError(
        Failure.TOO_LONG, f"the sound track is too long ({hms(seconds)}); the limit is {hms(limit)}"
    )
