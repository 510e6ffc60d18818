"""``python -m tests.slow_converter``: the converter with every conversion slowed down on
purpose, for tests that stop or kill a converter mid-job (test only; the production
settings know nothing of it). ``CONVERTER_TEST_SLOWDOWN``: seconds of sleep per second
of audio (``EncodeOptions.slowdown``). ``ConverterRunner.start`` runs this module
instead of ``converter`` when a test sets that variable."""

from __future__ import annotations

import dataclasses
import os

from common.service import run_service
from converter import __main__ as converter_main
from converter.settings import Settings
from converter.transcode import EncodeOptions

SLOWDOWN_VARIABLE = "CONVERTER_TEST_SLOWDOWN"
_production_options = Settings.encode_options


def _slowed_options(self: Settings) -> EncodeOptions:
    slowdown = float(os.environ.get(SLOWDOWN_VARIABLE, "0"))
    return dataclasses.replace(_production_options(self), slowdown=slowdown)


if __name__ == "__main__":
    Settings.encode_options = _slowed_options  # type: ignore[method-assign]
    run_service("converter", converter_main.main, big_streams=True)
