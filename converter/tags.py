"""The MP3's ID3v2.4 tag, written with mutagen: title, artist, album and the source's own
tags (date, genre, comment), its chapters as CHAP/CTOC frames, and a cover (APIC): the
video's attached picture, or a still from 10% into the video.
"""

from __future__ import annotations

import io
import logging
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.error
from mutagen.id3 import (
    APIC,
    CHAP,
    COMM,
    CTOC,
    ID3,
    TALB,
    TCON,
    TDRC,
    TIT2,
    TPE1,
    CTOCFlags,
    PictureType,
)
from video2mp3.storage.v1 import options_pb2

log = logging.getLogger("converter.tags")

MAX_TEXT = 250
MAX_COVER_BYTES = 4 * 1024 * 1024  # a bigger attached picture is left out
COVER_WIDTH = 640
COVER_AT = 0.10  # a frame cover is taken this far into the video
_SOURCE_TAGS = {"artist": TPE1, "album": TALB, "date": TDRC, "genre": TCON}


def clean_text(text: str) -> str:
    """Without control characters, trimmed, at most 250 characters."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()[:MAX_TEXT]


@dataclass(frozen=True)
class Chapter:
    start_ms: int
    end_ms: int
    title: str


@dataclass(frozen=True)
class Cover:
    data: bytes
    mime: str


@dataclass
class Tags:
    text: dict[str, str] = field(default_factory=dict)  # title, artist, album, date, genre, comment
    chapters: list[Chapter] = field(default_factory=list)
    cover: Cover | None = None

    def id3(self) -> bytes:
        """The ID3v2.4 tag as bytes, ready to go before the MP3 frames; empty when no tag."""
        tag = ID3()
        for key, frame in (("title", TIT2), *_SOURCE_TAGS.items()):
            if self.text.get(key):
                tag.add(frame(encoding=3, text=[self.text[key]]))
        if self.text.get("comment"):
            tag.add(COMM(encoding=3, lang="und", desc="", text=[self.text["comment"]]))
        ids = [f"chp{i}" for i in range(len(self.chapters))]
        for element, chapter in zip(ids, self.chapters, strict=True):
            tag.add(
                CHAP(
                    element_id=element,
                    start_time=chapter.start_ms,
                    end_time=chapter.end_ms,
                    sub_frames=[TIT2(encoding=3, text=[chapter.title])] if chapter.title else [],
                )
            )
        if ids:
            tag.add(
                CTOC(
                    element_id="toc",
                    flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED,
                    child_element_ids=ids,
                    sub_frames=[TIT2(encoding=3, text=["Chapters"])],
                )
            )
        if self.cover is not None:
            tag.add(
                APIC(
                    encoding=3,
                    mime=self.cover.mime,
                    type=PictureType.COVER_FRONT,
                    desc="",
                    data=self.cover.data,
                )
            )
        if not tag:
            return b""
        out = io.BytesIO()
        tag.save(out, v2_version=4, padding=lambda _info: 0)
        return _chapters_in_order(out.getvalue())


def _syncsafe(data: bytes) -> int:
    return (data[0] << 21) | (data[1] << 14) | (data[2] << 7) | data[3]


def _chapters_in_order(tag: bytes) -> bytes:
    """mutagen orders frames of one kind by their size; put the CHAP frames in chapter
    order (some readers, ffprobe among them, list chapters in frame order)."""
    frames: list[bytes] = []
    pos, end = 10, 10 + _syncsafe(tag[6:10])
    while pos + 10 <= end and tag[pos : pos + 4] != b"\x00\x00\x00\x00":
        size = 10 + _syncsafe(tag[pos + 4 : pos + 8])
        frames.append(tag[pos : pos + size])
        pos += size
    chapters = sorted((f for f in frames if f[:4] == b"CHAP"), key=lambda f: int(f[13 : f.index(0, 10)]))
    ordered = iter(chapters)
    return tag[:10] + b"".join(next(ordered) if f[:4] == b"CHAP" else f for f in frames) + tag[pos:]


def read_tags(
    container: av.container.InputContainer,
    options: options_pb2.ConversionOptions,
    default_title: str,
) -> dict[str, str]:
    """Text tags: the options' title, artist and album, else the source's; the title falls
    back to the file name; date, genre and comment from the source."""
    source = {str(k).lower(): str(v) for k, v in container.metadata.items()}
    text = {key: clean_text(source.get(key, "")) for key in ("artist", "album", "date", "genre", "comment")}
    text["title"] = clean_text(default_title)
    for key in ("title", "artist", "album"):
        if options.HasField(key):
            text[key] = clean_text(getattr(options, key))
    return {key: value for key, value in text.items() if value}


def read_chapters(container: av.container.InputContainer, start: float, end: float | None) -> list[Chapter]:
    """The source's chapters within [start, end), in the MP3's time (from ``start``)."""
    chapters = []
    for chapter in container.chapters():
        base = chapter["time_base"] or Fraction(1, 1000)
        begin, finish = float(chapter["start"] * base), float(chapter["end"] * base)
        if end is not None:
            finish = min(finish, end)
        begin = max(begin, start)
        if finish <= begin:
            continue
        title = clean_text(str((chapter.get("metadata") or {}).get("title", "")))
        chapters.append(Chapter(round((begin - start) * 1000), round((finish - start) * 1000), title))
    return chapters


def _videos(container: av.container.InputContainer) -> tuple[list[av.VideoStream], list[av.VideoStream]]:
    """(attached pictures, moving pictures)."""
    pictures: list[av.VideoStream] = []
    moving: list[av.VideoStream] = []
    for stream in container.streams.video:
        attached = stream.disposition & av.stream.Disposition.attached_pic
        (pictures if attached else moving).append(stream)
    return pictures, moving


def attached_cover(path: str) -> Cover | None:
    """The first attached picture (MP4 ``covr``, Matroska cover attachment), as stored."""
    with av.open(path, metadata_errors="ignore") as container:
        pictures, _ = _videos(container)
        for stream in pictures:
            mime = {"mjpeg": "image/jpeg", "png": "image/png"}.get(stream.codec_context.name)
            if mime is None:
                continue
            for packet in container.demux(stream):
                data = bytes(packet)
                if data and len(data) <= MAX_COVER_BYTES:
                    return Cover(data, mime)
                break
    return None


def frame_cover(path: str) -> Cover | None:
    """A still from 10% into the video, as a JPEG at most 640 pixels wide."""
    with av.open(path, metadata_errors="ignore") as container:
        _, moving = _videos(container)
        if not moving:
            return None
        stream = moving[0]
        for other in container.streams:
            if other.index != stream.index:
                other.discard = av.stream.Discard.all
        duration = container.duration / 1_000_000 if container.duration else 0.0
        target = duration * COVER_AT
        if target > 0:
            container.seek(int(target * 1_000_000), backward=True)  # in AV_TIME_BASE
        picture = None
        for frame in container.decode(stream):
            picture = frame
            if frame.time is None or frame.time >= target:
                break
        if picture is None:
            return None
        return Cover(_jpeg(picture), "image/jpeg")


def _jpeg(frame: av.VideoFrame) -> bytes:
    width, height = frame.width, frame.height
    if width > COVER_WIDTH:
        width, height = COVER_WIDTH, max(2, round(height * COVER_WIDTH / width / 2) * 2)
    image = frame.reformat(width=width, height=height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"qscale": "3"}
    encoder.open()
    image.pts = 0
    return b"".join(bytes(p) for p in encoder.encode(image)) + b"".join(
        bytes(p) for p in encoder.encode(None)
    )


def cover_for(path: str, mode: int) -> Cover | None:
    """The cover the option asks for; None when there is none (never fails the job)."""
    try:
        if mode == options_pb2.COVER_MODE_NONE:
            return None
        if mode == options_pb2.COVER_MODE_FRAME:
            return frame_cover(path)
        return attached_cover(path)
    except (av.error.FFmpegError, ValueError) as error:
        log.warning("no cover: the picture could not be read", extra={"error": repr(error)})
        return None
