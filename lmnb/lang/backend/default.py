"""The process-wide default backend: set by `set_default_backend`, else a `Runtime()` on the
default model, started lazily on first use."""

from __future__ import annotations

import threading
from typing import Any

_default: Any = None
_default_lock = threading.Lock()


def set_default_backend(backend: Any) -> None:
    global _default
    with _default_lock:
        _default = backend


def get_default_backend() -> Any:
    """The default backend, starting `Runtime()` on the default model the first time."""
    global _default
    with _default_lock:
        if _default is None:
            from lmnb.lang.backend.runtime import Runtime

            _default = Runtime()
        return _default


def current_default_backend() -> Any:
    """The default backend if one is set or started, else None (starts nothing)."""
    return _default


def flush_cache(backend: Any = None) -> bool:
    """Empty the cache of `backend` (the default one if started); False if none."""
    backend = backend or _default
    return backend.flush_cache() if backend is not None else False


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    backend = backend or _default
    return backend.get_server_info() if backend is not None else None
