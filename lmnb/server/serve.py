"""Running the app: uvicorn in a background thread (`start_server`) or in the foreground (`serve`).

Owns binding the socket (127.0.0.1 by default; port 0 picks a free port, so the URL is known
before uvicorn starts), starting and stopping uvicorn, and printing where the server listens.
`ServerThread.stop()` stops the HTTP server only; the engine belongs to whoever made it
(`serve` makes one and shuts it down on exit). Knows nothing of routes.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn

from lmnb.runtime import Engine
from lmnb.server.app import create_app

GRACEFUL_S = 5  # how long a stopping server waits for open connections


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(engine: Engine, api_key: str | None, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(create_app(engine, api_key), log_level=log_level,
                          timeout_graceful_shutdown=GRACEFUL_S, access_log=False)


class ServerThread:
    """An HTTP server for `engine` on a background thread; `.url`, `.stop()`."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_level: str = "warning") -> None:
        self.engine = engine
        self._sock = bind(host, port)
        self.url = url_of(self._sock)
        self._server = uvicorn.Server(_config(engine, api_key, log_level))
        self._thread = threading.Thread(target=self._server.run, args=([self._sock],),
                                        name="lmnb-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the lmnb server failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the lmnb server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = GRACEFUL_S + 5) -> None:
        """Stop serving (open streams are cancelled); the engine keeps running."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerThread({self.url!r}, model={self.engine.model_name!r})"


def start_server(engine: Engine, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, log_level: str = "warning") -> ServerThread:
    """Serve `engine` over HTTP from a background thread; returns once it accepts requests."""
    return ServerThread(engine, host, port, api_key, log_level).start()


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 30000,
          api_key: str | None = None, log_level: str = "info", **engine_args: Any) -> None:
    """Load `model` into an engine and serve it until interrupted (the `lmnb serve` command).
    engine_args: Engine's own (dtype, max_tokens_in_cache, policy, ...)."""
    sock = bind(host, port)  # before loading: a taken port fails at once
    engine = Engine(model, **engine_args)
    # uvicorn stops gracefully on SIGTERM, then re-raises it: exit cleanly instead of dying
    previous = _on_sigterm(_exit_cleanly)
    try:
        print(f"lmnb serving {engine.model_name} at {url_of(sock)}", flush=True)
        uvicorn.Server(_config(engine, api_key, log_level)).run([sock])
    finally:
        _on_sigterm(previous)
        engine.shutdown()
        sock.close()
        sys.stdout.flush()


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _on_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler (main thread only); returns the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
