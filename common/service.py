"""The one way a video2mp3 process runs (auth, storage, converter, notifier, and any
background process to come): ``run_service(name, main)``.

``run_service`` sets up JSON logging, installs the SIGTERM/SIGINT handlers, calls
``main(service)`` and, whatever happens, closes what was registered with
``service.closing``, newest first, then exits with main's code. Inside ``main``:

* ``service.settings(Settings.from_env)`` — a bad setting stops the process (exit 2) with
  a message that names it;
* ``service.on_stop(callback)`` — run once, on the first signal (stop taking work);
* ``service.closing(close)`` — run at exit (channels, connections, pools);
* ``service.health(port, ready)`` — ``/healthz`` and ``/readyz`` over HTTP for a worker's
  probes (a port of 0 serves nothing);
* ``service.serve_grpc(server, grace)`` — a gRPC server until a signal, then NOT_SERVING,
  a graceful stop and its clean-up; ``service.run_threads(...)`` — worker loops until they
  return; ``service.wait()`` — block until a signal.

The gateway is the exception: gunicorn owns its processes and signals; its hooks in
``gateway/gunicorn_conf.py`` do the same closing at worker exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from common import memory
from common.config import SettingsError, exit_on_settings_error
from common.grpc_server import GrpcServer
from common.logs import setup_logging
from common.worker_health import start_health_server

log = logging.getLogger("service")

T = TypeVar("T")


class Service:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._closers: list[tuple[str, Callable[[], object]]] = []
        self._lock = threading.Lock()

    # -- set-up
    def settings(self, load: Callable[[], T]) -> T:
        """The process's settings; a missing or malformed one stops it with a clear message."""
        try:
            return load()
        except SettingsError as error:
            exit_on_settings_error(self.name, error)
            raise  # unreachable: exit_on_settings_error exits

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the first SIGTERM/SIGINT (in the signal handler: keep it short)."""
        self._on_stop.append(callback)

    def closing(self, close: Callable[[], object], what: str = "") -> None:
        """Run ``close`` when the process ends (newest first); its errors are logged."""
        self._closers.append((what or getattr(close, "__qualname__", repr(close)), close))

    def health(self, port: int, ready: Callable[[], bool]) -> None:
        """Serve ``/healthz`` and ``/readyz`` on ``port`` (0: none) until the process ends."""
        if not port:
            return
        server = start_health_server(port, ready)

        def stop() -> None:
            server.shutdown()
            server.server_close()

        self.closing(stop, "health endpoint")

    # -- signals
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
        self.stop()

    def stop(self) -> None:
        """What a signal does: set ``stopping`` and run the on-stop callbacks, once."""
        with self._lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
        for callback in self._on_stop:
            try:
                callback()
            except Exception:
                log.exception("stop callback failed")

    # -- running
    def wait(self) -> None:
        """Block until a signal (or ``stop()``)."""
        while not self.stopping.wait(0.5):
            pass

    def serve_grpc(self, srv: GrpcServer, grace: float = 10.0) -> None:
        """Start, mark SERVING, wait for a signal; then NOT_SERVING, stop with ``grace``
        seconds for the calls in flight, and run the server's clean-up."""
        srv.start()
        srv.set_serving(True)
        log.info(
            "serving",
            extra={
                "port": srv.port,
                "health_port": srv.health_port,
                "services": ",".join(srv.service_names),
            },
        )
        self.wait()
        srv.stop(grace)

    def run_threads(self, targets: Iterable[tuple[str, Callable[[], None]]]) -> None:
        """Run each loop in a thread of its own until all of them return (after ``on_stop``
        callbacks told them to). The main thread only waits, so signals reach it."""
        threads = [threading.Thread(target=target, name=name) for name, target in targets]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.5)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for what, close in reversed(closers):
            try:
                close()
            except Exception:
                log.exception("closing failed", extra={"what": what})


def run_service(name: str, main: Callable[[Service], int | None], *, big_streams: bool = False) -> None:
    """Run ``main`` as the process ``name`` and exit with its code (None: 0).

    ``big_streams``: the process streams big files on many threads (storage, converter):
    glibc is told to keep fewer arenas (common/memory.py), before any thread allocates.
    """
    if big_streams:
        memory.limit_arenas()
    setup_logging(name)
    service = Service(name)
    service.install_signal_handlers()
    try:
        code = main(service)
    finally:
        service.close()
    log.info("stopped", extra={"code": code or 0})
    raise SystemExit(code or 0)
