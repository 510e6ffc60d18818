"""converter.segments and converter.mp3frames: MP3 encoded in segments on several threads
and joined must decode like the output of one encoder.

Every check decodes the MP3 with PyAV and compares it with the PCM that went in, block by
block (576 samples), against the same comparison for one LAME encoder over the whole
sound. A join that hands a frame the wrong bit-reservoir bytes decodes to noise for a
frame or two, which these checks see (the naive join below proves it).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import av
import lameenc
import numpy as np
import pytest
from video2mp3.storage.v1.options_pb2 import ConversionOptions

from converter import mp3frames, segments
from converter.media import choose_audio, open_media, probe
from converter.pipeline import Pipeline, Plan
from converter.transcode import Cancelled, EncodeOptions, Transcoder
from testing.media import MediaSpec, make_media

RATE = 44100
DECODER_DELAY = 576 + 529  # LAME's encoder delay + the MPEG decoder's: where the input starts
BLOCK = 576


class Lame:
    def __init__(self, channels: int, bitrate: int = 192, vbr: bool = False) -> None:
        encoder = lameenc.Encoder()
        encoder.set_in_sample_rate(RATE)
        encoder.set_out_sample_rate(RATE)
        encoder.set_channels(channels)
        encoder.set_quality(5)
        if vbr:
            encoder.set_vbr(4)
            encoder.set_vbr_quality(2)
        else:
            encoder.set_bit_rate(bitrate)
        self._encoder = encoder

    def encode_pcm(self, pcm: bytes) -> bytes:
        return bytes(self._encoder.encode(pcm))

    def flush(self) -> bytes:
        return bytes(self._encoder.flush())


def signal(kind: str, seconds: float, channels: int, seed: int = 7) -> np.ndarray:
    """Test sound, (samples, channels) floats in -1..1."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "music":  # a wandering tone, a second voice and bursts of noise
        left = 0.3 * np.sin(2 * np.pi * (220 + 100 * np.sin(t)) * t)
        left += 0.1 * rng.standard_normal(n) * (np.sin(2 * np.pi * 2 * t) > 0.8)
        right = 0.25 * np.sin(2 * np.pi * 330 * t + 1) + 0.5 * left
        sound = np.stack([left, right], axis=1)
    elif kind == "noise":  # the hardest case for the reservoir: every frame wants bits
        sound = 0.5 * rng.standard_normal((n, 2))
    elif kind == "clicks":  # transients: short blocks, window switching
        clicks = ((np.arange(n) % 11025) < 30) * 0.9 + 0.01 * rng.standard_normal(n)
        sound = np.stack([clicks, clicks], axis=1)
    elif kind == "silence":
        sound = np.zeros((n, 2))
    else:
        raise ValueError(kind)
    return np.clip(sound[:, :channels], -1, 1)


def to_pcm(sound: np.ndarray) -> bytes:
    return (sound * 32767).astype("<i2").tobytes()


def single(pcm: bytes, make: Callable[[], Lame]) -> bytes:
    encoder = make()
    return encoder.encode_pcm(pcm) + encoder.flush()


def segmented(
    pcm: bytes, make: Callable[[], Lame], channels: int, length: int, piece: int = 4000
) -> tuple[bytes, segments.JoinStats]:
    """Encode through Segmenter → a pool of two threads → Joiner, feeding odd-sized pieces."""
    frame_bytes = mp3frames.SAMPLES_PER_FRAME * 2 * channels
    stop = threading.Event()
    buffers = segments.BufferPool(3, segments.buffer_bytes(frame_bytes, length), stop)
    segmenter = segments.Segmenter(frame_bytes, length, buffers)
    joiner = segments.Joiner()
    out = bytearray()
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[tuple[Future[segments.Encoded], segments.Segment]] = []

        def drain(keep: int) -> None:
            while len(pending) > keep:
                future, segment = pending.pop(0)
                out.extend(joiner.add(future.result()))
                buffers.give(segment.buffer)

        for offset in range(0, len(pcm), piece * 4):
            for segment in segmenter.feed(pcm[offset : offset + piece * 4]):
                pending.append((pool.submit(segments.encode_segment, make, segment), segment))
                drain(keep=1)
        last = segmenter.finish()
        pending.append((pool.submit(segments.encode_segment, make, last), last))
        drain(keep=0)
    return bytes(out), joiner.stats


def decode(mp3: bytes) -> np.ndarray:
    """(channels, samples) floats."""
    with av.open(io.BytesIO(mp3), mode="r", format="mp3") as container:
        frames = [frame.to_ndarray() for frame in container.decode(audio=0)]
    return np.concatenate(frames, axis=1)


def block_errors(mp3: bytes, sound: np.ndarray) -> np.ndarray:
    """Squared error of each 576-sample block of the decoded MP3 against the input."""
    decoded = decode(mp3)[:, DECODER_DELAY : DECODER_DELAY + len(sound)]
    reference = sound.T[:, : decoded.shape[1]]
    blocks = decoded.shape[1] // BLOCK
    diff = (decoded[:, : blocks * BLOCK] - reference[:, : blocks * BLOCK]) ** 2
    return diff.reshape(decoded.shape[0], blocks, BLOCK).sum(axis=(0, 2))


def assert_decodes_like_one_encoder(joined: bytes, whole: bytes, sound: np.ndarray) -> None:
    assert len(mp3frames.split_frames(joined)) == len(mp3frames.split_frames(whole))
    assert decode(joined).shape == decode(whole).shape
    ours, theirs = block_errors(joined, sound), block_errors(whole, sound)
    # Overall: the same fidelity to the input (another valid encoding of it, or the same one).
    assert ours.sum() <= theirs.sum() * 1.02 + 1e-6
    # Locally: no block much worse than one encoder's. Joins measured here stay within
    # 1.5x (another valid encoding); reservoir bytes from the wrong frame give about 3x.
    floor = max(float(np.median(theirs)), 1e-3)
    worst = float(np.max(ours / (theirs + floor)))
    assert worst < 2.0, f"a block decodes {worst:.1f}x worse than with one encoder"


CASES = [
    ("music", 2, 192, False),
    ("music", 2, 128, False),
    ("music", 1, 64, False),
    ("music", 2, 320, False),
    ("music", 2, 0, True),
    ("noise", 2, 192, False),
    ("noise", 2, 0, True),
    ("clicks", 2, 192, False),
    ("silence", 2, 192, False),
]


CASE_IDS = [f"{kind}-{channels}ch-{'vbr' if vbr else bitrate}" for kind, channels, bitrate, vbr in CASES]


@pytest.mark.parametrize(("kind", "channels", "bitrate", "vbr"), CASES, ids=CASE_IDS)
def test_segments_join_into_one_stream(kind: str, channels: int, bitrate: int, vbr: bool) -> None:
    sound = signal(kind, 30.0, channels)
    pcm = to_pcm(sound)

    def make() -> Lame:
        return Lame(channels, bitrate, vbr)

    whole = single(pcm, make)
    joined, stats = segmented(pcm, make, channels, length=150)  # 7 joins in 30 s
    assert stats.joins == 7
    assert stats.misfit_windows == 0
    assert_decodes_like_one_encoder(joined, whole, sound)


def test_the_checks_see_a_join_that_ignores_the_reservoir() -> None:
    """Negative control: segments cut and concatenated as they are do not pass."""
    sound = signal("noise", 20.0, 2)
    pcm = to_pcm(sound)
    frame_bytes = mp3frames.SAMPLES_PER_FRAME * 4
    cut, preroll = 300, 3
    first = mp3frames.split_frames(single(pcm[: (cut + 8) * frame_bytes], lambda: Lame(2)))
    second = mp3frames.split_frames(single(pcm[(cut - preroll) * frame_bytes :], lambda: Lame(2)))
    # The frame at the cut borrows bytes from frames dropped here, and the encoders differ.
    assert 0 < second[preroll].main_data_begin != first[cut].main_data_begin
    naive = b"".join(bytes(f.data) for f in first[:cut]) + b"".join(bytes(f.data) for f in second[preroll:])
    with pytest.raises(AssertionError):
        assert_decodes_like_one_encoder(naive, single(pcm, lambda: Lame(2)), sound)


def test_a_frame_given_a_higher_bit_rate_decodes_the_same() -> None:
    """Frame 60 grows; frame 61's reservoir bytes move to the new end of its slot."""
    sound = signal("music", 5.0, 2)
    stream = single(to_pcm(sound), lambda: Lame(2))
    frames = mp3frames.split_frames(stream)
    borrowed = frames[61].main_data_begin
    assert borrowed > 0
    tail = mp3frames.reservoir_tail(frames, 61, borrowed)
    grown = frames[60]
    before = len(grown.data)
    assert mp3frames.grow_slot(grown, 300)
    assert grown.bitrate_index > 11 and len(grown.data) >= before + 300
    assert mp3frames.frame_size(bytes(grown.data[:4])) == len(grown.data)
    assert not mp3frames.grow_slot(mp3frames.split_frames(stream)[61], 10_000)  # beyond 320 kb/s
    mp3frames.overwrite_reservoir_tail(frames, 61, tail)
    changed = b"".join(bytes(f.data) for f in frames)
    assert len(changed) >= len(stream) + 300
    np.testing.assert_array_equal(decode(changed), decode(stream))


def test_a_join_that_needs_more_room_raises_the_bit_rate_of_one_frame() -> None:
    """Two encodings overlapping for a long stretch: join them at every frame where the
    later one needs more reservoir than the earlier one kept."""
    sound = signal("noise", 12.0, 2)
    pcm = to_pcm(sound)
    frame_bytes = mp3frames.SAMPLES_PER_FRAME * 4
    start = 100
    x = mp3frames.split_frames(single(pcm, lambda: Lame(2)))
    y_data = single(pcm[start * frame_bytes :], lambda: Lame(2))
    whole = b"".join(bytes(f.data) for f in x)
    tight = [
        j
        for j in range(start + 20, len(x) - 20)
        if mp3frames.split_frames(y_data)[j - start].main_data_begin > x[j].main_data_begin
    ]
    assert len(tight) >= 3, "the noise should give frames that need more room"
    for join in tight[:3]:
        before = segments.Encoded(0, 0, 0, mp3frames.split_frames(whole), final=False)
        after = segments.Encoded(1, start, start, mp3frames.split_frames(y_data), final=True)
        joiner = segments.Joiner()
        assert joiner._make_room(before, after, join)
        assert joiner.stats.grown == 1
        joined = b"".join(bytes(f.data) for f in before.frames[:join]) + b"".join(
            bytes(f.data) for f in after.frames[join - start :]
        )
        assert_decodes_like_one_encoder(joined, whole, sound)


def test_segmenter_cuts_overlapping_ranges_and_reuses_its_buffers() -> None:
    frame_bytes = 8  # a "frame" of 8 bytes keeps the arithmetic visible
    length = 40
    stop = threading.Event()
    buffers = segments.BufferPool(2, segments.buffer_bytes(frame_bytes, length), stop)
    segmenter = segments.Segmenter(frame_bytes, length, buffers)
    total_frames = 130
    data = bytes(i % 251 for i in range(total_frames * frame_bytes + 5))  # a partial frame at the end
    got: list[tuple[int, int, int, bytes]] = []
    for offset in range(0, len(data), 37):
        for segment in segmenter.feed(data[offset : offset + 37]):
            got.append((segment.first, segment.start, segment.size, bytes(segment.buffer[: segment.size])))
            buffers.give(segment.buffer)
    last = segmenter.finish()
    assert last.final
    got.append((last.first, last.start, last.size, bytes(last.buffer[: last.size])))
    tail = segments.CANDIDATES + segments.LOOKAHEAD
    # Each starts PREROLL (8) frames before its own part and runs 19 frames past it.
    assert [(first, start) for first, start, _, _ in got] == [(0, 0), (32, 40), (72, 80)]
    for first, start, size, pcm in got[:-1]:
        assert size == (start + length + tail - first) * frame_bytes
        assert pcm == data[first * frame_bytes : first * frame_bytes + size]
    assert got[-1][3] == data[72 * frame_bytes :]
    buffers.take()  # the one given back; the other is still the last segment's
    stop.set()
    with pytest.raises(segments.Stopped):
        buffers.take()


def test_segment_length_divides_the_sound_evenly_between_threads() -> None:
    assert segments.segment_frames(None, 2) == segments.MAX_SEGMENT
    assert segments.segment_frames(100, 2) == segments.MIN_SEGMENT
    for frames in (2000, 4594, 31250, 156250):
        for threads in (2, 3, 4):
            length = segments.segment_frames(frames, threads)
            assert segments.MIN_SEGMENT <= length <= segments.MAX_SEGMENT
            assert -(-frames // length) % threads == 0  # no thread idles at the end


LONG = 90.0  # seconds: eight segments on two threads


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("segments") / "long.mp4"
    return make_media(path, MediaSpec(container="mp4", duration=LONG, width=32, height=24, fps=2))


def convert(path: Path, threads: int) -> tuple[bytes, Transcoder]:
    transcoder = Transcoder(path, options=EncodeOptions(threads=threads))
    return b"".join(transcoder.chunks()), transcoder


def test_transcoder_on_several_threads_matches_one_thread(long_clip: Path) -> None:
    many, transcoder = convert(long_clip, threads=3)
    one, _ = convert(long_clip, threads=1)
    assert transcoder.encoder_name == "LameencEncoder x3"
    assert abs(transcoder.duration_seconds - LONG) < 0.05
    a, b = decode(many), decode(one)
    assert a.shape == b.shape
    # Two valid encodings of a steady tone: they differ by a little quantisation noise
    # (a misplaced reservoir would differ by as much as the tone itself).
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.01 * np.sqrt(np.mean(b**2))
    assert np.max(np.abs(a - b)) < 0.02


def test_segments_are_joined_while_the_sound_is_still_being_decoded(long_clip: Path) -> None:
    """The decoder runs at most a few segments ahead of the encoders (fixed PCM buffers),
    and joined frames leave as soon as the next segment is encoded."""
    with open_media(long_clip) as container:
        stream = choose_audio(container, probe(container, long_clip.name), ConversionOptions())
        pipeline = Pipeline(container, stream, Plan(encode=EncodeOptions(threads=2)))
        frames = pipeline.frames()
        first = next(frames)
        decoded_when_first = pipeline.duration_seconds
        rest = b"".join(frames)
    assert first[:2] == b"\xff\xfb"
    assert decoded_when_first < 0.75 * LONG
    assert abs(pipeline.duration_seconds - LONG) < 0.05
    assert len(mp3frames.split_frames(first + rest)) == pytest.approx(LONG * RATE / 1152, abs=3)


def test_a_stopped_conversion_on_several_threads_leaves_no_thread_behind(long_clip: Path) -> None:
    before = {t.ident for t in threading.enumerate()}
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 300

    transcoder = Transcoder(long_clip, options=EncodeOptions(threads=2), should_stop=should_stop)
    with pytest.raises(Cancelled):
        for _ in transcoder.chunks():
            pass
    assert {t.ident for t in threading.enumerate()} <= before
