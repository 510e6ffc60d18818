"""What the tests and the benchmarks share: processes we start and stop by pid, free ports
and waiting (processes.py), a slice of the real servers and an SMTP sink (infra.py), and a
media factory (media.py).

Both import this package; neither imports the other (tests/test_layout.py checks).
"""
