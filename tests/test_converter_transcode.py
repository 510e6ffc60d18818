"""converter.transcode: real media made with PyAV, converted, and the MP3 decoded again."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from converter import transcode
from converter.tags import clean_text
from converter.transcode import (
    EncodeOptions,
    Failure,
    MediaError,
    Transcoder,
    output_channels,
    output_rate,
    title_from_filename,
    transcode_file,
)
from testing.media import MediaSpec, _write_audio, audio_duration, audio_info, random_file, truncated_copy
from tests.fixtures.converter import MediaCache

MATRIX = [
    ("mp4", "aac"),
    ("mov", "aac"),
    ("mov", "pcm_s16le"),
    ("mkv", "opus"),
    ("mkv", "vorbis"),
    ("mkv", "ac3"),
    ("mkv", "flac"),
    ("mkv", "aac"),
    ("mkv", "mp3"),
    ("webm", "opus"),
    ("webm", "vorbis"),
    ("avi", "mp3"),
    ("avi", "ac3"),
    ("avi", "pcm_s16le"),
    ("flv", "mp3"),
    ("flv", "aac"),
    ("ts", "mp2"),
    ("ts", "aac"),
    ("ts", "ac3"),
    ("ts", "mp3"),
]
AUDIO_ONLY = ["m4a", "mp3", "wav", "ogg", "flac"]


def convert(source: Path, tmp_path: Path, options: EncodeOptions | None = None, title: str = "t") -> Path:
    target = tmp_path / f"{source.stem}.mp3"
    transcode_file(source, target, title, options)
    return target


def check_mp3(mp3: Path, source: Path, channels: int, bitrate: int | None = 192_000) -> dict[str, Any]:
    info = audio_info(mp3)
    assert info["format"] == "mp3"
    assert info["codec"] in {"mp3", "mp3float"}
    assert info["channels"] == channels
    if bitrate is not None:
        assert info["bit_rate"] == bitrate
    assert abs(audio_duration(mp3) - audio_duration(source)) < 0.1
    return info


@pytest.mark.parametrize(("container", "codec"), MATRIX, ids=[f"{c}-{a}" for c, a in MATRIX])
def test_every_container_and_codec_converts(
    container: str, codec: str, media_cache: MediaCache, tmp_path: Path
) -> None:
    source = media_cache.get(MediaSpec(container=container, audio_codec=codec, duration=1.5))
    check_mp3(convert(source, tmp_path), source, channels=2)


@pytest.mark.parametrize("container", AUDIO_ONLY)
def test_audio_only_files_convert(container: str, media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container=container, video_codec=None, duration=1.5))
    check_mp3(convert(source, tmp_path), source, channels=2)


def test_mono_stays_mono(media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mp4", channels=1, duration=1.0))
    check_mp3(convert(source, tmp_path), source, channels=1)


@pytest.mark.parametrize(("container", "codec"), [("mkv", "ac3"), ("mp4", "aac"), ("wav", "pcm_s16le")])
def test_surround_is_downmixed_to_stereo(
    container: str, codec: str, media_cache: MediaCache, tmp_path: Path
) -> None:
    video = None if container == "wav" else "default"
    source = media_cache.get(
        MediaSpec(container=container, video_codec=video, audio_codec=codec, channels=6, duration=1.0)
    )
    assert audio_info(source)["channels"] == 6
    check_mp3(convert(source, tmp_path), source, channels=2)


@pytest.mark.parametrize(
    ("rate", "expected"), [(96000, 48000), (88200, 44100), (22050, 44100), (16000, 48000), (32000, 32000)]
)
def test_sample_rates_mp3_cannot_carry_are_resampled(
    rate: int, expected: int, media_cache: MediaCache, tmp_path: Path
) -> None:
    source = media_cache.get(MediaSpec(container="wav", video_codec=None, sample_rate=rate, duration=1.0))
    info = check_mp3(convert(source, tmp_path), source, channels=2)
    assert info["sample_rate"] == expected


def test_rate_and_channel_rules() -> None:
    assert [output_rate(r) for r in (8000, 11025, 44100, 48000, 32000, 192000, 0)] == [
        48000,
        44100,
        44100,
        48000,
        32000,
        48000,
        48000,
    ]
    assert [output_channels(c) for c in (1, 2, 3, 6, 8)] == [1, 2, 2, 2, 2]


def test_configured_cbr_bitrate(media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=1.0))
    check_mp3(convert(source, tmp_path, EncodeOptions(bitrate_kbps=128)), source, 2, bitrate=128_000)


def test_vbr_option(media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=2.0))
    cbr = convert(source, tmp_path, EncodeOptions(bitrate_kbps=320))
    cbr_size = cbr.stat().st_size
    vbr_dir = tmp_path / "vbr"
    vbr_dir.mkdir()
    vbr = convert(source, vbr_dir, EncodeOptions(vbr=True, vbr_quality=7))
    check_mp3(vbr, source, channels=2, bitrate=None)
    # A pure tone needs few bits: VBR spends far fewer than 320 kb/s CBR.
    assert vbr.stat().st_size < cbr_size / 2


@pytest.mark.parametrize("vbr", [False, True])
def test_pyav_fallback_encoder(vbr: bool, media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mp4", duration=1.0))
    options = EncodeOptions(encoder="libmp3lame", vbr=vbr, bitrate_kbps=160)
    check_mp3(convert(source, tmp_path, options), source, 2, bitrate=None if vbr else 160_000)


def test_falls_back_to_pyav_when_lameenc_is_missing(
    monkeypatch: pytest.MonkeyPatch, media_cache: MediaCache, tmp_path: Path
) -> None:
    real_import = builtins.__import__

    def no_lameenc(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "lameenc":
            raise ImportError("no lameenc here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lameenc)
    source = media_cache.get(MediaSpec(container="mp4", duration=1.0))
    transcoder = Transcoder(source, "x")
    target = tmp_path / "out.mp3"
    target.write_bytes(b"".join(transcoder.chunks()))
    assert transcoder.encoder_name == "PyAVEncoder"
    check_mp3(target, source, channels=2)


def test_id3_title_from_the_original_filename(media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mp4", duration=1.0))
    title = title_from_filename("C:\\Users\\me\\Été à Paris — 2024.final.mp4")
    assert title == "Été à Paris — 2024.final"
    mp3 = convert(source, tmp_path, title=title)
    with av.open(str(mp3)) as container:
        assert container.metadata.get("title") == title
    assert clean_text("\x00\n") == ""
    assert title_from_filename("noext") == "noext"
    assert title_from_filename(".hidden") == ".hidden"


def dominant_frequency(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray()[0].astype(np.float64) for f in container.decode(stream)])
    spectrum = np.abs(np.fft.rfft(samples[: rate // 2]))
    return float(np.argmax(spectrum) * rate / (rate // 2))


def test_first_track_when_none_is_default(media_cache: MediaCache, tmp_path: Path) -> None:
    source = media_cache.get(MediaSpec(container="mkv", audio_codec="flac", audio_tracks=2, duration=1.0))
    assert abs(dominant_frequency(convert(source, tmp_path)) - 440) < 10


def test_default_track_is_chosen(tmp_path: Path) -> None:
    source = tmp_path / "two-tracks.mkv"
    spec = MediaSpec(container="mkv", duration=1.0)
    with av.open(str(source), mode="w", format="matroska") as out:
        first = out.add_stream("flac", rate=44100)
        second = out.add_stream("flac", rate=44100)
        assert isinstance(first, av.AudioStream) and isinstance(second, av.AudioStream)
        first.layout = second.layout = "stereo"
        first.disposition = av.stream.Disposition(0)
        second.disposition = av.stream.Disposition.default
        _write_audio(out, first, spec, 440.0)
        _write_audio(out, second, spec, 880.0)
    assert abs(dominant_frequency(convert(source, tmp_path)) - 880) < 10


def test_video_packets_are_never_decoded(
    monkeypatch: pytest.MonkeyPatch, media_cache: MediaCache, tmp_path: Path
) -> None:
    source = media_cache.get(MediaSpec(container="mp4", duration=1.0))
    decoded_types: list[str] = []
    real_decode = av.Packet.decode

    def spy(packet: av.Packet) -> Any:
        decoded_types.append(packet.stream.type)
        return real_decode(packet)

    monkeypatch.setattr(av.Packet, "decode", spy)
    convert(source, tmp_path)
    assert decoded_types and set(decoded_types) == {"audio"}


def test_chunks_come_from_a_temporary_file_that_is_removed(media_cache: MediaCache) -> None:
    """The frames are encoded into a file beside the video first (the Xing header at the
    front counts them); the chunks then stream from it, and the file is gone afterwards."""
    source = media_cache.get(MediaSpec(container="mkv", audio_codec="flac", duration=20.0))
    before = set(source.parent.iterdir())
    transcoder = Transcoder(source, "stream", EncodeOptions(threads=1))
    chunks = transcoder.chunks()
    first = next(chunks)
    assert first.startswith(b"ID3")
    assert next(p.name for p in set(source.parent.iterdir()) - before).startswith(".mp3-")
    rest = list(chunks)
    assert len(rest) >= 1
    assert abs(transcoder.duration_seconds - 20.0) < 0.1
    assert transcoder.bytes_out == len(first) + sum(len(c) for c in rest)
    assert set(source.parent.iterdir()) == before


# ------------------------------------------------------------------------------------- bad input


def failure_of(path: Path, options: EncodeOptions | None = None) -> MediaError:
    with pytest.raises(MediaError) as caught:
        transcoder = Transcoder(path, "x", options)
        for _ in transcoder.chunks():
            pass
    return caught.value


def test_zero_bytes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    error = failure_of(empty)
    assert error.kind is Failure.EMPTY
    assert "empty" in error.reason


def test_random_bytes_are_not_media(tmp_path: Path) -> None:
    error = failure_of(random_file(tmp_path / "noise.mp4"))
    assert error.kind is Failure.NOT_MEDIA
    assert "not a video or audio file" in error.reason


def test_text_file_is_not_media(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("hello, this is not a video\n" * 100)
    assert failure_of(text).kind is Failure.NOT_MEDIA


def test_video_without_audio(media_cache: MediaCache) -> None:
    error = failure_of(media_cache.get(MediaSpec(container="mp4", audio_codec=None, duration=1.0)))
    assert error.kind is Failure.NO_AUDIO
    assert error.reason == "the video has no sound track"


@pytest.mark.parametrize(
    ("container", "codec", "kinds"),
    [
        ("mp4", "aac", {Failure.CORRUPT}),
        ("mov", "pcm_s16le", {Failure.CORRUPT}),
        ("mkv", "opus", {Failure.TRUNCATED}),
        ("webm", "opus", {Failure.TRUNCATED}),
        ("flv", "mp3", {Failure.TRUNCATED}),
        ("mkv", "vorbis", {Failure.CORRUPT, Failure.TRUNCATED}),
    ],
)
def test_truncated_files(
    container: str, codec: str, kinds: set[Failure], media_cache: MediaCache, tmp_path: Path
) -> None:
    source = media_cache.get(MediaSpec(container=container, audio_codec=codec, duration=2.0))
    error = failure_of(truncated_copy(source, tmp_path / f"cut.{container}"))
    assert error.kind in kinds
    assert "incomplete" in error.reason


def test_over_the_duration_limit_from_the_header(media_cache: MediaCache) -> None:
    source = media_cache.get(MediaSpec(container="mp4", duration=2.0))
    with pytest.raises(MediaError) as caught:
        Transcoder(source, "x", EncodeOptions(max_duration_seconds=1.0))
    assert caught.value.kind is Failure.TOO_LONG
    assert "too long" in caught.value.reason and "limit is 1.0 s" in caught.value.reason


def test_over_the_duration_limit_while_decoding(
    monkeypatch: pytest.MonkeyPatch, media_cache: MediaCache
) -> None:
    """A header can lie (or say nothing): decoded audio is counted too."""
    source = media_cache.get(MediaSpec(container="ts", audio_codec="mp2", duration=2.0))
    monkeypatch.setattr(transcode, "stream_duration", lambda container, stream: None)
    error = failure_of(source, EncodeOptions(max_duration_seconds=1.0))
    assert error.kind is Failure.TOO_LONG


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="bit rate"):
        EncodeOptions(bitrate_kbps=100)
    with pytest.raises(ValueError, match="encoder"):
        EncodeOptions(encoder="ffmpeg")
