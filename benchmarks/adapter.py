"""The one place the benchmarks call the converter's conversion function.

``python -m benchmarks.adapter IN OUT`` converts in a fresh process (so its wall time and
peak RSS are the conversion's own, like the ffmpeg process it is compared with) and prints
one JSON line: media seconds, seconds spent converting, encoder used.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def convert(source: Path, target: Path, bitrate_kbps: int = 192) -> dict[str, object]:
    """Convert ``source``'s sound track to the MP3 file ``target`` (192 kb/s CBR, as ffmpeg's -b:a)."""
    from converter.transcode import EncodeOptions, Transcoder

    began = time.perf_counter()
    transcoder = Transcoder(source, title=source.stem, options=EncodeOptions(bitrate_kbps=bitrate_kbps))
    with target.open("wb") as out:
        for chunk in transcoder.chunks():  # streamed: never the whole MP3 in memory
            out.write(chunk)
    return {
        "media_seconds": transcoder.duration_seconds,
        "convert_seconds": time.perf_counter() - began,
        "encoder": transcoder.encoder_name,
        "bytes": transcoder.bytes_out,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.adapter IN OUT.mp3", file=sys.stderr)
        return 2
    print(json.dumps(convert(Path(argv[0]), Path(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
