"""converter: a job's options on real media made by the tests — bit rate and mode, channels,
sample rate, trimming (it seeks), track choice, loudness, tags, chapters and cover — and
the Xing/LAME header, checked with ffprobe, ffmpeg's ebur128 filter and mutagen."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import pytest
from mutagen.id3 import ID3
from mutagen.mp3 import MP3, BitrateMode
from video2mp3.storage.v1 import options_pb2

from converter import xing
from converter.encoders import EncodeOptions
from converter.media import Failure, MediaError
from converter.transcode import Transcoder, transcode_file
from testing.media import COVER_SIZE, MediaSpec, audio_duration, make_media

Options = options_pb2.ConversionOptions
FRAME = 1152 / 44100  # one MP3 frame at 44.1 kHz, ≈ 26 ms


def mp3_info(path: Path) -> Any:
    """mutagen's view of the MP3 stream (it reads the Xing/LAME header)."""
    return MP3(str(path)).info


def ffprobe(path: Path) -> dict[str, Any]:
    binary = shutil.which("ffprobe")
    assert binary, "ffprobe is needed (make bench-tools installs Debian's ffmpeg)"
    out = subprocess.run(
        [binary, "-v", "error", "-show_streams", "-show_format", "-show_chapters", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def loudness(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP), measured by ffmpeg's ebur128 filter."""
    binary = shutil.which("ffmpeg")
    assert binary
    log = subprocess.run(
        [binary, "-hide_banner", "-nostats", "-i", str(path), "-af", "ebur128=peak=true", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    summary = log[log.rindex("Summary:") :]
    integrated = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))  # type: ignore[union-attr]
    peak = float(re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary).group(1))  # type: ignore[union-attr]
    return integrated, peak


RICH = MediaSpec(
    container="mp4",
    audio_codec="aac",
    duration=6.0,
    width=160,
    height=120,
    audio_tracks=2,
    languages=("eng", "deu"),
    amplitudes=(0.9, 0.01),  # a loud and a quiet track
    default_track=1,
    tags=(
        ("title", "Source Title"),
        ("artist", "Source Artist"),
        ("album", "Source Album"),
        ("date", "2024"),
        ("genre", "Jazz"),
        ("comment", "made by the tests"),
    ),
    chapters=((0.0, 2.0, "Intro"), (2.0, 4.5, "Middle"), (4.5, 6.0, "End")),
    cover=True,
)


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_media(tmp_path_factory.mktemp("rich") / "rich.mp4", RICH)


def convert(source: Path, tmp_path: Path, job: Options, options: EncodeOptions | None = None) -> Path:
    target = tmp_path / "out.mp3"
    transcode_file(source, target, "the file name", options, job)
    return target


def test_defaults_are_ffmpegs_cbr_192k_at_lame_quality_3(rich: Path, tmp_path: Path) -> None:
    assert EncodeOptions().quality == 3 and EncodeOptions().bitrate_kbps == 192
    mp3 = convert(rich, tmp_path, Options())
    info = mp3_info(mp3)
    assert info.bitrate_mode == BitrateMode.CBR and info.bitrate == 192_000
    assert info.sample_rate == 44100 and info.channels == 2
    # The Xing/LAME header: mutagen and ffmpeg both get the exact length from it.
    assert info.encoder_info.startswith("LAME")
    assert abs(info.length - 6.0) < FRAME
    assert abs(audio_duration(mp3) - 6.0) < FRAME
    assert abs(float(ffprobe(mp3)["format"]["duration"]) - 6.0) < 3 * FRAME


@pytest.mark.parametrize("quality", [0, 4, 9])
def test_vbr_has_a_xing_header(quality: int, rich: Path, tmp_path: Path) -> None:
    mp3 = convert(rich, tmp_path, Options(vbr_quality=quality, track=0))
    info = mp3_info(mp3)
    assert info.bitrate_mode == BitrateMode.VBR
    assert abs(info.length - 6.0) < FRAME
    assert abs(audio_duration(mp3) - 6.0) < FRAME
    with mp3.open("rb") as handle:
        handle.seek(ID3(str(mp3)).size)
        assert b"Xing" in handle.read(200)


def test_bitrate_channels_and_sample_rate(rich: Path, tmp_path: Path) -> None:
    mp3 = convert(
        rich, tmp_path, Options(bitrate_kbps=64, channels=options_pb2.CHANNEL_MODE_MONO, sample_rate=32000)
    )
    stream = ffprobe(mp3)["streams"][0]
    assert (stream["bit_rate"], stream["channels"], stream["sample_rate"]) == ("64000", 1, "32000")
    mono = make_media(tmp_path / "mono.wav", MediaSpec(container="wav", video_codec=None, channels=1))
    assert mp3_info(convert(mono, tmp_path, Options())).channels == 1
    stereo = convert(mono, tmp_path, Options(channels=options_pb2.CHANNEL_MODE_STEREO))
    assert mp3_info(stereo).channels == 2


def test_trim_is_exact_and_chapters_follow(rich: Path, tmp_path: Path) -> None:
    mp3 = convert(rich, tmp_path, Options(start_seconds=1.5, end_seconds=5.0))
    assert abs(audio_duration(mp3) - 3.5) < FRAME
    assert abs(mp3_info(mp3).length - 3.5) < FRAME
    chapters = [
        (float(c["start_time"]), float(c["end_time"]), c["tags"]["title"]) for c in ffprobe(mp3)["chapters"]
    ]
    assert chapters == [(0.0, 0.5, "Intro"), (0.5, 3.0, "Middle"), (3.0, 3.5, "End")]


def test_trimming_seeks_instead_of_decoding_the_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = make_media(tmp_path / "long.mkv", MediaSpec(container="mkv", audio_codec="flac", duration=60.0))
    decoded: list[float] = []
    real = av.Packet.decode

    def spy(packet: av.Packet) -> Any:
        frames = real(packet)
        decoded.extend(f.time for f in frames if f.time is not None)
        return frames

    monkeypatch.setattr(av.Packet, "decode", spy)
    mp3 = convert(source, tmp_path, Options(start_seconds=50.0, end_seconds=52.0))
    assert decoded and min(decoded) > 45.0  # nothing of the first 45 s was decoded
    assert max(decoded) < 53.0  # and decoding stopped at the end
    monkeypatch.undo()
    assert abs(audio_duration(mp3) - 2.0) < FRAME


def test_track_choice_and_its_errors(rich: Path, tmp_path: Path) -> None:
    default = Transcoder(rich, "x")
    assert default.source.chosen_track == 1  # the default-flagged one
    assert [(t.index, t.codec, t.language, t.is_default) for t in default.source.audio_tracks] == [
        (0, "aac", "eng", False),
        (1, "aac", "deu", True),
    ]
    assert default.source.container == "mp4" and abs(default.source.duration_seconds - 6.0) < 0.1
    default.close()
    with pytest.raises(MediaError) as caught:
        Transcoder(rich, "x", job=Options(track=3))
    assert caught.value.kind is Failure.NO_SUCH_TRACK
    assert caught.value.reason == (
        "there is no audio track 3: the video has 2 audio tracks: 0 (aac, eng), 1 (aac, deu)"
    )
    with pytest.raises(MediaError) as caught:
        Transcoder(rich, "x", job=Options(start_seconds=7.0))
    assert caught.value.kind is Failure.OUT_OF_RANGE and "past the end" in caught.value.reason


@pytest.mark.parametrize("track", [0, 1])
def test_normalize_reaches_minus_16_lufs_from_loud_and_quiet(track: int, rich: Path, tmp_path: Path) -> None:
    before, _ = loudness(convert(rich, tmp_path, Options(track=track)))
    assert abs(before - (-16.0)) > 8  # the tracks are far from the target
    integrated, peak = loudness(convert(rich, tmp_path, Options(track=track, normalize=True)))
    assert abs(integrated - (-16.0)) <= 1.0
    assert peak <= -1.0


def test_a_peaky_track_is_limited(tmp_path: Path) -> None:
    """Quiet overall but with full-scale peaks: the gain to -16 LUFS would clip, the
    limiter keeps the peaks down."""
    source = make_media(
        tmp_path / "peaky.wav",
        MediaSpec(container="wav", video_codec=None, duration=4.0, amplitudes=(0.02,)),
    )
    with av.open(str(source)) as container:
        rate = container.streams.audio[0].sample_rate
    data = bytearray(source.read_bytes())
    header = 44
    for second in range(4):  # a full-scale click each second
        at = header + (second * rate + 100) * 4
        data[at : at + 8] = b"\xff\x7f\xff\x7f\x01\x80\x01\x80"
    source.write_bytes(bytes(data))
    _, peak = loudness(convert(source, tmp_path, Options(normalize=True)))
    assert peak <= -1.0


def test_tags_from_the_options_and_the_source(rich: Path, tmp_path: Path) -> None:
    tags = ID3(str(convert(rich, tmp_path, Options())))
    assert tags.version == (2, 4, 0)
    assert str(tags["TIT2"]) == "the file name"  # the title defaults to the file name
    assert str(tags["TPE1"]) == "Source Artist" and str(tags["TALB"]) == "Source Album"
    assert str(tags["TDRC"]) == "2024" and str(tags["TCON"]) == "Jazz"
    assert tags.getall("COMM")[0].text == ["made by the tests"]
    toc = tags.getall("CTOC")[0]
    assert len(toc.child_element_ids) == 3
    given = ID3(str(convert(rich, tmp_path, Options(title="T", artist="A", album="B"))))
    assert (str(given["TIT2"]), str(given["TPE1"]), str(given["TALB"])) == ("T", "A", "B")


def test_covers(rich: Path, tmp_path: Path) -> None:
    attached = ffprobe(convert(rich, tmp_path, Options()))["streams"]
    picture = [s for s in attached if s["codec_type"] == "video"]
    assert len(picture) == 1 and picture[0]["disposition"]["attached_pic"] == 1
    assert (picture[0]["width"], picture[0]["height"]) == COVER_SIZE
    frame = ffprobe(convert(rich, tmp_path, Options(cover=options_pb2.COVER_MODE_FRAME)))["streams"]
    still = [s for s in frame if s["codec_type"] == "video"]
    assert len(still) == 1 and still[0]["codec_name"] == "mjpeg" and still[0]["width"] == 160
    wide = make_media(tmp_path / "wide.mkv", MediaSpec(container="mkv", width=1280, height=720, fps=2))
    big = [
        s
        for s in ffprobe(convert(wide, tmp_path, Options(cover=options_pb2.COVER_MODE_FRAME)))["streams"]
        if s["codec_type"] == "video"
    ]
    assert (big[0]["width"], big[0]["height"]) == (640, 360)
    mkv = make_media(tmp_path / "cover.mkv", MediaSpec(container="mkv", cover=True))  # an attachment
    attachment = [
        s for s in ffprobe(convert(mkv, tmp_path, Options()))["streams"] if s["codec_type"] == "video"
    ]
    assert len(attachment) == 1 and (attachment[0]["width"], attachment[0]["height"]) == COVER_SIZE
    none = ffprobe(convert(rich, tmp_path, Options(cover=options_pb2.COVER_MODE_NONE)))["streams"]
    assert [s["codec_type"] for s in none] == ["audio"]


def test_frame_index_follows_frames_split_anywhere(rich: Path, tmp_path: Path) -> None:
    mp3 = convert(rich, tmp_path, Options(cover=options_pb2.COVER_MODE_NONE, vbr_quality=2))
    data = mp3.read_bytes()
    frames = data[ID3(str(mp3)).size :]
    whole, pieces = xing.FrameIndex(), xing.FrameIndex()
    whole.feed(frames)
    for at in range(0, len(frames), 333):
        pieces.feed(frames[at : at + 333])
    assert list(whole.offsets) == list(pieces.offsets) and whole.frames > 200
    # The header frame counts the frames after it.
    assert whole.frames - 1 == int.from_bytes(frames[36 + 8 : 36 + 12], "big")


def test_start_past_the_end_of_a_file_that_does_not_say_its_length(
    monkeypatch: pytest.MonkeyPatch, rich: Path, tmp_path: Path
) -> None:
    from converter import transcode

    monkeypatch.setattr(transcode, "stream_duration", lambda container, stream: None)
    with pytest.raises(MediaError) as caught:
        convert(rich, tmp_path, Options(start_seconds=30.0))
    assert caught.value.kind is Failure.OUT_OF_RANGE and "past the end" in caught.value.reason
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_measuring_pass_stops_when_asked(rich: Path) -> None:
    from converter.media import Cancelled

    transcoder = Transcoder(rich, "x", job=Options(normalize=True), should_stop=lambda: True)
    with pytest.raises(Cancelled):
        next(transcoder.chunks())
    assert [p.name for p in rich.parent.iterdir()] == ["rich.mp4"]  # no frames left behind
