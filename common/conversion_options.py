"""The rules of a conversion's options (``ConversionOptions``), shared by the gateway, which
reads them from a form, and storage, which refuses a job whose options break them.
Messages name the form field of ``POST /upload`` and what it allows."""

from __future__ import annotations

from video2mp3.storage.v1 import options_pb2

BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
SAMPLE_RATES = (32000, 44100, 48000)
MAX_TEXT = 250
MAX_SECONDS = 100 * 3600.0


def problem(options: options_pb2.ConversionOptions) -> str | None:
    """What is wrong with ``options``, in words naming the field; None when nothing is."""
    if options.HasField("bitrate_kbps") and options.bitrate_kbps not in BITRATES_KBPS:
        return f"bitrate must be one of {' '.join(map(str, BITRATES_KBPS))} (kb/s)"
    if options.HasField("vbr_quality") and not 0 <= options.vbr_quality <= 9:
        return "quality must be V0 … V9 (LAME -V: V0 best, V9 smallest)"
    if options.HasField("bitrate_kbps") and options.HasField("vbr_quality"):
        return "bitrate (CBR) and quality (VBR) cannot be given together"
    if options.channels not in options_pb2.ChannelMode.values():
        return "channels must be mono or stereo"
    if options.HasField("sample_rate") and options.sample_rate not in SAMPLE_RATES:
        return f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}"
    for name in ("start", "end"):
        field = f"{name}_seconds"
        if options.HasField(field):  # type: ignore[arg-type]
            value = getattr(options, field)
            if not 0 <= value <= MAX_SECONDS:
                return f"{name} must be a time from 0 to {MAX_SECONDS / 3600:.0f} hours"
    if options.HasField("end_seconds") and options.end_seconds <= options.start_seconds:
        return "end must be after start"
    if options.HasField("track") and not 0 <= options.track < 100:
        return "track must be an audio track number from 0"
    for name in ("title", "artist", "album"):
        if len(getattr(options, name)) > MAX_TEXT:
            return f"{name} must be at most {MAX_TEXT} characters"
    if options.cover not in options_pb2.CoverMode.values():
        return "cover must be auto, frame or none"
    return None
