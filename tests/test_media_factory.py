"""The media factory writes real, decodable files with the properties asked for."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from testing.media import CONTAINERS, MediaSpec, audio_duration, audio_info, make_media, truncated_copy


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_every_container_is_decodable(tmp_path: Path, container: str) -> None:
    path = make_media(tmp_path / f"clip.{container}", MediaSpec(container=container, duration=1.5))
    assert abs(audio_duration(path) - 1.5) < 0.06


def test_channels_rate_and_no_audio(tmp_path: Path) -> None:
    mono = make_media(tmp_path / "mono.mkv", MediaSpec(container="mkv", audio_codec="flac", channels=1))
    assert audio_info(mono)["channels"] == 1
    surround = make_media(
        tmp_path / "51.mkv", MediaSpec(container="mkv", audio_codec="ac3", channels=6, sample_rate=48000)
    )
    assert audio_info(surround)["channels"] == 6
    silent = make_media(tmp_path / "silent.mp4", MediaSpec(audio_codec=None))
    with av.open(str(silent)) as container:
        assert not container.streams.audio
        assert container.streams.video


def test_truncated_copy_is_shorter(tmp_path: Path) -> None:
    full = make_media(tmp_path / "full.mp4", MediaSpec(duration=2.0))
    cut = truncated_copy(full, tmp_path / "cut.mp4", 0.5)
    assert cut.stat().st_size < full.stat().st_size
