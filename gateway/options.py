"""The conversion options of ``POST /upload``: form fields → ``ConversionOptions``, and
back to JSON for the job resource. A bad value is a 400 whose message names the field and
what it allows."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from video2mp3.storage.v1 import options_pb2

from common.conversion_options import BITRATES_KBPS, MAX_TEXT, SAMPLE_RATES, problem
from gateway.errors import ApiError

FIELDS = (
    "bitrate",
    "quality",
    "channels",
    "sample_rate",
    "start",
    "end",
    "track",
    "normalize",
    "title",
    "artist",
    "album",
    "cover",
)
_CLOCK = re.compile(r"(?:(\d+):)?([0-5]?\d):([0-5]\d(?:\.\d{1,3})?)")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_CHANNELS = {"mono": options_pb2.CHANNEL_MODE_MONO, "stereo": options_pb2.CHANNEL_MODE_STEREO}
_COVERS = {
    "auto": options_pb2.COVER_MODE_AUTO,
    "frame": options_pb2.COVER_MODE_FRAME,
    "none": options_pb2.COVER_MODE_NONE,
}
_BOOLEANS = {"true": True, "false": False}


def _bad(field: str, allowed: str) -> ApiError:
    return ApiError(400, "invalid_argument", f"{field}: {allowed}")


def parse_time(field: str, text: str) -> float:
    """``75.5`` (seconds) or ``[HH:]MM:SS[.mmm]``."""
    value = text.strip()
    if _SECONDS.fullmatch(value):
        seconds = float(value)
    elif match := _CLOCK.fullmatch(value):
        hours, minutes, secs = match.groups()
        seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
    else:
        raise _bad(field, f"must be seconds (75.5) or [HH:]MM:SS[.mmm] (01:15.5), not {text[:40]!r}")
    if not math.isfinite(seconds):
        raise _bad(field, "must be a finite time")
    return seconds


def _choice(field: str, text: str, choices: Mapping[str, Any]) -> Any:
    value = text.strip().lower()
    if value not in choices:
        raise _bad(field, f"must be one of {', '.join(choices)}, not {text[:40]!r}")
    return choices[value]


def _number(field: str, text: str, allowed: tuple[int, ...], what: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) not in allowed:
        raise _bad(field, f"must be one of {' '.join(map(str, allowed))} ({what}), not {text[:40]!r}")
    return int(value)


def parse(fields: Mapping[str, str]) -> options_pb2.ConversionOptions:
    """The options of an upload's form fields (all optional); ApiError 400 on a bad value."""
    options = options_pb2.ConversionOptions()
    for name, text in fields.items():
        if name == "bitrate":
            options.bitrate_kbps = _number(name, text, BITRATES_KBPS, "CBR kb/s")
        elif name == "quality":
            value = text.strip().upper()
            if not re.fullmatch(r"V\d", value):
                raise _bad(name, f"must be V0 … V9 (VBR, LAME -V), not {text[:40]!r}")
            options.vbr_quality = int(value[1])
        elif name == "channels":
            options.channels = _choice(name, text, _CHANNELS)
        elif name == "sample_rate":
            options.sample_rate = _number(name, text, SAMPLE_RATES, "Hz")
        elif name in ("start", "end"):
            setattr(options, f"{name}_seconds", parse_time(name, text))
        elif name == "track":
            if not text.strip().isdigit():
                raise _bad(name, f"must be an audio track number from 0, not {text[:40]!r}")
            options.track = int(text.strip())
        elif name == "normalize":
            options.normalize = _choice(name, text, _BOOLEANS)
        elif name in ("title", "artist", "album"):
            if len(text) > MAX_TEXT:
                raise _bad(name, f"must be at most {MAX_TEXT} characters")
            if text.strip():
                setattr(options, name, text.strip())
        elif name == "cover":
            options.cover = _choice(name, text, _COVERS)
        else:
            raise _bad(name, f"unknown field; the fields are file, {', '.join(FIELDS)}")
    wrong = problem(options)
    if wrong:
        raise ApiError(400, "invalid_argument", wrong)
    return options


def to_json(options: options_pb2.ConversionOptions) -> dict[str, Any]:
    """The options as given (only those given), with the form's names and values."""
    body: dict[str, Any] = {}
    if options.HasField("bitrate_kbps"):
        body["bitrate"] = options.bitrate_kbps
    if options.HasField("vbr_quality"):
        body["quality"] = f"V{options.vbr_quality}"
    if options.channels:
        body["channels"] = {v: k for k, v in _CHANNELS.items()}.get(options.channels)
    if options.HasField("sample_rate"):
        body["sample_rate"] = options.sample_rate
    if options.HasField("start_seconds"):
        body["start"] = options.start_seconds
    if options.HasField("end_seconds"):
        body["end"] = options.end_seconds
    if options.HasField("track"):
        body["track"] = options.track
    if options.normalize:
        body["normalize"] = True
    for name in ("title", "artist", "album"):
        if options.HasField(name):
            body[name] = getattr(options, name)
    if options.cover:
        body["cover"] = {v: k for k, v in _COVERS.items()}.get(options.cover)
    return body


def source_json(source: options_pb2.SourceInfo) -> dict[str, Any]:
    return {
        "container": source.container,
        "duration_seconds": round(source.duration_seconds, 3),
        "audio_tracks": [
            {
                "index": t.index,
                "codec": t.codec,
                "channels": t.channels,
                "sample_rate": t.sample_rate,
                "language": t.language or None,
                "default": t.is_default,
            }
            for t in source.audio_tracks
        ],
        "track": source.chosen_track,
    }
