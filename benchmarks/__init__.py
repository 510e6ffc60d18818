"""Benchmarks of video2mp3: ``python -m benchmarks`` (``make bench``).

Every figure is a ratio against a baseline measured in the same invocation, on the same
machine and the same generated inputs, over several runs (median quoted):

1. conversion  — the converter's own conversion function vs Debian's ffmpeg command line
2. streaming   — peak memory of gateway, storage and converter with a 1 GiB file and a
                 60-minute video; upload throughput vs a direct pymongo GridFS upload
3. end-to-end  — a batch through the whole system vs ``xargs -P2 ffmpeg``; the latency of
                 one short clip from upload to email, by stage

Benchmarks measure; the test suite never times anything (tests/test_bench_smoke.py only
runs these code paths on tiny inputs so they cannot rot).
"""
