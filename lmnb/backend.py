"""The backend programs run on: `Runtime`, a local `lmnb.runtime.Engine`, and the default one.

Owns the narrow interface the interpreter uses (`generate`, `tokenizer`, `chat_template`) and
the process-wide default backend, started lazily on first use with the default model. Imports
the runtime (and so torch) only when a `Runtime` is made, so `import lmnb` stays light.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from lmnb.chat import ChatTemplate


class Runtime:
    """A local engine. `Runtime()` loads the default model; `Runtime(engine=e)` wraps one.

    Keyword arguments go to `lmnb.runtime.Engine` (`model`, `dtype`, `max_tokens_in_cache`,
    `policy`, `disable_radix_cache`); `model_path` is SGLang's name for `model`.
    """

    def __init__(self, model: str | None = None, *, engine: Any = None, **engine_kwargs: Any):
        if engine is None:
            from lmnb.runtime import Engine

            model = model or engine_kwargs.pop("model_path", None)
            engine = Engine(model=model, **engine_kwargs)
        self.engine = engine

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @cached_property
    def chat_template(self) -> ChatTemplate:
        return ChatTemplate.from_tokenizer(self.tokenizer.hf)

    def generate(self, prompt: list[int], params: Any) -> Any:
        return self.engine.generate(prompt, params)

    def flush_cache(self) -> bool:
        self.engine.flush_cache()
        return True

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()

    def get_server_info(self) -> dict[str, Any]:
        return self.engine.stats()

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __repr__(self) -> str:
        return f"Runtime({self.engine!r})"


_default: Runtime | None = None
_default_lock = threading.Lock()


def set_default_backend(backend: Runtime | None) -> None:
    global _default
    with _default_lock:
        _default = backend


def get_default_backend() -> Runtime:
    """The default backend, starting `Runtime()` on the default model the first time."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default


def flush_cache(backend: Runtime | None = None) -> bool:
    """Empty the radix cache of `backend` (the default one if started); False if none."""
    backend = backend or _default
    return backend.flush_cache() if backend is not None else False


def get_server_info(backend: Runtime | None = None) -> dict[str, Any] | None:
    backend = backend or _default
    return backend.get_server_info() if backend is not None else None
