"""A media factory for tests: writes real video and audio files with PyAV.

    make_media(tmp_path / "clip.mp4", MediaSpec(container="mp4", audio_codec="aac", duration=2.0))

Files are small (tiny frames, few fps) so a test suite can make many of them quickly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Container → (format name, default video codec, default audio codec)
CONTAINERS: dict[str, tuple[str, str | None, str | None]] = {
    "mp4": ("mp4", "libx264", "aac"),
    "mov": ("mov", "libx264", "aac"),
    "mkv": ("matroska", "libx264", "opus"),
    "webm": ("webm", "libvpx", "opus"),
    "avi": ("avi", "mpeg4", "mp3"),
    "flv": ("flv", "flv", "mp3"),
    "ts": ("mpegts", "mpeg2video", "mp2"),
    "m4a": ("mp4", None, "aac"),
    "mp3": ("mp3", None, "mp3"),
    "wav": ("wav", None, "pcm_s16le"),
    "ogg": ("ogg", None, "vorbis"),
    "flac": ("flac", None, "flac"),
}

ENCODERS = {"mp3": "libmp3lame", "opus": "libopus"}
FIXED_RATES = {"opus": 48000, "libopus": 48000}


@dataclass(frozen=True)
class MediaSpec:
    container: str = "mp4"
    video_codec: str | None = "default"  # None: no video stream
    audio_codec: str | None = "default"  # None: no audio stream
    duration: float = 2.0
    channels: int = 2
    sample_rate: int = 44100
    width: int = 64
    height: int = 48
    fps: int = 10
    audio_tracks: int = 1
    frequency: float = 440.0
    # Per audio track (missing entries: no language, amplitude 0.3).
    languages: tuple[str, ...] = ()
    amplitudes: tuple[float, ...] = ()
    default_track: int | None = None  # the track flagged default (None: as the muxer does)
    tags: tuple[tuple[str, str], ...] = ()  # container tags: ("artist", "Someone"), …
    chapters: tuple[tuple[float, float, str], ...] = ()  # (start s, end s, title)
    cover: bool = False  # an attached picture (a JPEG): MP4 covr, Matroska attachment


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


def make_media(path: Path, spec: MediaSpec | None = None) -> Path:
    spec = spec or MediaSpec()
    fmt, default_video, default_audio = CONTAINERS[spec.container]
    video_codec = default_video if spec.video_codec == "default" else spec.video_codec
    audio_codec = default_audio if spec.audio_codec == "default" else spec.audio_codec
    if video_codec is None and audio_codec is None:
        raise ValueError("a media file needs at least one stream")

    with av.open(str(path), mode="w", format=fmt) as out:
        vstream: av.VideoStream | None = None
        if video_codec is not None:
            added = out.add_stream(video_codec, rate=spec.fps)
            assert isinstance(added, av.VideoStream)
            vstream = added
            vstream.width, vstream.height = spec.width, spec.height
            vstream.pix_fmt = "yuv420p"
            if video_codec == "libx264":
                vstream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        astreams: list[av.AudioStream] = []
        if audio_codec is not None:
            encoder = ENCODERS.get(audio_codec, audio_codec)
            rate = FIXED_RATES.get(encoder, spec.sample_rate)
            for index in range(spec.audio_tracks):
                # FFmpeg's own Vorbis encoder is marked experimental.
                options = {"strict": "experimental"} if encoder == "vorbis" else {}
                astream = out.add_stream(encoder, rate=rate, options=options)
                assert isinstance(astream, av.AudioStream)
                astream.layout = _layout(spec.channels)
                if index < len(spec.languages):
                    astream.metadata["language"] = spec.languages[index]
                if spec.default_track is not None:
                    default = av.stream.Disposition.default
                    astream.disposition = default if index == spec.default_track else av.stream.Disposition(0)
                astreams.append(astream)
        picture = None
        if spec.cover and fmt in ("matroska", "webm"):
            out.add_attachment("cover.jpg", "image/jpeg", cover_jpeg())  # as mkvpropedit does
        elif spec.cover:
            picture = _add_cover(out)
        for key, value in spec.tags:
            out.metadata[key] = value
        if spec.chapters:
            out.set_chapters(
                [
                    {
                        "id": i + 1,
                        "start": round(a * 1000),
                        "end": round(b * 1000),
                        "time_base": Fraction(1, 1000),
                        "metadata": {"title": title},
                    }
                    for i, (a, b, title) in enumerate(spec.chapters)
                ]
            )

        if picture is not None:
            picture()
        if vstream is not None:
            _write_video(out, vstream, spec)
        for index, astream in enumerate(astreams):
            amplitude = spec.amplitudes[index] if index < len(spec.amplitudes) else 0.3
            _write_audio(out, astream, spec, spec.frequency * (index + 1), amplitude)
    return path


COVER_SIZE = (96, 64)  # width, height of the attached picture the factory makes


def cover_jpeg() -> bytes:
    """A small JPEG: red left half, blue right half."""
    width, height = COVER_SIZE
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, : width // 2, 0] = 220
    img[:, width // 2 :, 2] = 220
    ctx = av.CodecContext.create("mjpeg", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, "yuvj420p", Fraction(1, 25)
    ctx.open()
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj420p")
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def _add_cover(out: av.container.OutputContainer) -> Callable[[], None]:
    """Adds an attached-picture stream; the returned function writes its one packet."""
    stream = out.add_stream("mjpeg")
    assert isinstance(stream, av.VideoStream)
    stream.width, stream.height = COVER_SIZE
    stream.pix_fmt = "yuvj420p"
    stream.disposition = av.stream.Disposition.attached_pic

    def write() -> None:
        packet = av.Packet(cover_jpeg())
        packet.stream = stream
        packet.pts = packet.dts = 0
        packet.time_base = Fraction(1, 90000)
        out.mux(packet)

    return write


def _write_video(out: av.container.OutputContainer, stream: av.VideoStream, spec: MediaSpec) -> None:
    frames = max(1, round(spec.duration * spec.fps))
    for i in range(frames):
        img = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
        img[:, :, 0] = (i * 7) % 256
        img[:, : spec.width // 2, 1] = 200
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, spec.fps)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _write_audio(
    out: av.container.OutputContainer,
    stream: av.AudioStream,
    spec: MediaSpec,
    frequency: float,
    amplitude: float = 0.3,
) -> None:
    ctx = stream.codec_context
    rate = ctx.sample_rate
    total = round(spec.duration * rate)
    resampler = av.AudioResampler(
        format=ctx.format, layout=ctx.layout, rate=rate, frame_size=ctx.frame_size or 1024
    )
    chunk = 4096
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        tone = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
        planes = np.tile(tone, (spec.channels, 1))
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=_layout(spec.channels))
        frame.sample_rate = rate
        frame.pts = start
        for resampled in resampler.resample(frame):
            out.mux(stream.encode(resampled))
    for resampled in resampler.resample(None):
        out.mux(stream.encode(resampled))
    out.mux(stream.encode(None))


def audio_duration(path: Path) -> float:
    """Duration of the first audio stream, from the decoded samples (not the header)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = 0
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate
        return samples / rate


def audio_info(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return {
            "codec": stream.codec_context.name,
            "channels": stream.codec_context.channels,
            "sample_rate": stream.codec_context.sample_rate,
            "bit_rate": stream.codec_context.bit_rate or container.bit_rate,
            "format": container.format.name,
        }


def truncated_copy(source: Path, target: Path, fraction: float = 0.3) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: max(1, int(len(data) * fraction))])
    return target


def random_file(path: Path, size: int = 64 * 1024, seed: int = 0) -> Path:
    """Noise that is no media file. Seeded, not os.urandom: about one random 64 KiB file in
    400 opens as a DV stream without sound ("no sound track"), which made tests flaky."""
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def main() -> None:
    """``python -m testing.media OUT [--duration S]``: write a small test video (H.264/AAC MP4
    unless the suffix names another container)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    container = args.out.suffix.lstrip(".") or "mp4"
    make_media(args.out, MediaSpec(container=container, duration=args.duration, width=320, height=240))
    print(args.out)


if __name__ == "__main__":
    main()
